#pragma once

#include <napi.h>

namespace kiln_binding {

// loadEngine(path, options, onEvents) -> Promise<handle>: the serving runtime's Node-API face.
Napi::Value LoadEngine(const Napi::CallbackInfo& info);
// Registers the handle class; called once from the module's Init.
void InitServing(Napi::Env env, Napi::Object exports);

}  // namespace kiln_binding
