// The Node-API face of the engine compiler: `build` runs kiln::build on a worker thread and streams
// its progress back to JS; `inspect` reads a verified engine header. Everything heavier than a
// header read stays off the JS thread. The serving runtime (loadEngine) lives in serving.cpp.
#include <napi.h>

#include <atomic>
#include <memory>
#include <string>

#include "compiler/build.h"
#include "core/io_error.h"
#include "backend/cpu/target.h"
#include "engine/reader.h"
#include "serving.h"
#if KILN_CUDA
#include "backend/cuda/device.h"
#endif

namespace {

std::string required_string(const Napi::Object& options, const char* field) {
  Napi::Value value = options.Get(field);
  if (!value.IsString() || value.As<Napi::String>().Utf8Value().empty()) {
    throw Napi::TypeError::New(options.Env(), std::string("build options: '") + field +
                                                  "' must be a non-empty string");
  }
  return value.As<Napi::String>().Utf8Value();
}

int64_t optional_integer(const Napi::Object& options, const char* field, int64_t fallback) {
  Napi::Value value = options.Get(field);
  if (value.IsUndefined()) return fallback;
  if (!value.IsNumber()) {
    throw Napi::TypeError::New(options.Env(), std::string("build options: '") + field + "' must be a number");
  }
  double number = value.As<Napi::Number>().DoubleValue();
  if (number < 0 || number != static_cast<double>(static_cast<int64_t>(number))) {
    throw Napi::RangeError::New(options.Env(), std::string("build options: '") + field +
                                                   "' must be a non-negative integer");
  }
  return static_cast<int64_t>(number);
}

kiln::BuildOptions build_options_from(const Napi::Object& options) {
  kiln::BuildOptions out;
  out.model_dir = required_string(options, "modelDir");
  out.out_path = required_string(options, "outPath");
  try {
    out.precision = kiln::precision_from_name(required_string(options, "precision"));
  } catch (const kiln::Error& e) {
    throw Napi::RangeError::New(options.Env(), std::string("build options: 'precision': ") + e.what());
  }
  if (options.Has("calibrationPath") && !options.Get("calibrationPath").IsUndefined()) {
    out.calibration_path = required_string(options, "calibrationPath");
  }
  if (options.Has("lmHeadPrecision") && !options.Get("lmHeadPrecision").IsUndefined()) {
    const std::string head = required_string(options, "lmHeadPrecision");
    if (head != "fp8") {
      throw Napi::RangeError::New(options.Env(), "build options: 'lmHeadPrecision' must be \"fp8\" or left out, not \"" +
                                                     head + "\"");
    }
    out.fp8_lm_head = true;
  }
  if (options.Has("toolchainVersion") && !options.Get("toolchainVersion").IsUndefined()) {
    out.toolchain_version = required_string(options, "toolchainVersion");
  }
  out.max_seq_len = optional_integer(options, "maxSeqLen", out.max_seq_len);
  out.max_batch = optional_integer(options, "maxBatch", out.max_batch);
  out.threads = static_cast<int>(optional_integer(options, "threads", out.threads));
  Napi::Value autotune = options.Get("autotune");
  if (!autotune.IsUndefined()) out.autotune = autotune.ToBoolean().Value();
  return out;
}

// One build on the libuv pool. Progress crosses to JS through the worker's queue, so the JS callback
// runs on the main thread in order; the cancel flag is shared with the handle returned to JS.
class BuildWorker : public Napi::AsyncProgressQueueWorker<kiln::BuildProgress> {
 public:
  BuildWorker(Napi::Env env, kiln::BuildOptions options, Napi::Function on_progress,
              std::shared_ptr<std::atomic<bool>> cancel)
      : Napi::AsyncProgressQueueWorker<kiln::BuildProgress>(env, "kiln.build"),
        deferred_(Napi::Promise::Deferred::New(env)),
        options_(std::move(options)),
        cancel_(std::move(cancel)) {
    if (!on_progress.IsEmpty()) on_progress_ = Napi::Persistent(on_progress);
  }

  Napi::Promise promise() const { return deferred_.Promise(); }

  void Execute(const ExecutionProgress& progress) override {
    try {
      result_ = kiln::build(
          options_, [&progress](const kiln::BuildProgress& p) { progress.Send(&p, 1); }, *cancel_);
    } catch (const kiln::Cancelled&) {
      failure_ = "KILN_BUILD_CANCELLED";
      SetError("build cancelled");
    } catch (const kiln::IoError& e) {
      failure_ = "KILN_BUILD_FAILED";
      SetError(e.what());
    } catch (const kiln::Error& e) {
      // The checkpoint or the options are at fault (unsupported architecture, missing tensor, bad
      // shape): the same inputs fail the same way, so callers must not retry.
      failure_ = "KILN_BUILD_INVALID_INPUT";
      SetError(e.what());
    } catch (const std::exception& e) {
      failure_ = "KILN_BUILD_FAILED";
      SetError(e.what());
    }
  }

  void OnProgress(const kiln::BuildProgress* data, size_t count) override {
    if (on_progress_.IsEmpty()) return;
    Napi::Env env = Env();
    for (size_t i = 0; i < count; ++i) {
      Napi::Object event = Napi::Object::New(env);
      event.Set("phase", data[i].phase);
      event.Set("percent", data[i].percent);
      event.Set("message", data[i].message);
      on_progress_.Call({event});
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object result = Napi::Object::New(env);
    result.Set("path", result_.path);
    result.Set("sha256", result_.sha256);
    result.Set("bytes", Napi::Number::New(env, static_cast<double>(result_.bytes)));
    result.Set("seconds", result_.seconds);
    deferred_.Resolve(result);
  }

  void OnError(const Napi::Error& error) override {
    Napi::Error out = Napi::Error::New(Env(), error.Message());
    out.Set("code", failure_);
    deferred_.Reject(out.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  kiln::BuildOptions options_;
  std::shared_ptr<std::atomic<bool>> cancel_;
  Napi::FunctionReference on_progress_;
  kiln::BuildResult result_;
  // The error's code for JS: cancelled, invalid input (permanent) or failed (the machine; retryable).
  std::string failure_ = "KILN_BUILD_FAILED";
};

// build(options, onProgress?) -> { promise, cancel() }
Napi::Value Build(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) {
    throw Napi::TypeError::New(env, "build(options, onProgress?): options must be an object");
  }
  Napi::Function on_progress;
  if (info.Length() > 1 && !info[1].IsUndefined()) {
    if (!info[1].IsFunction()) throw Napi::TypeError::New(env, "build: onProgress must be a function");
    on_progress = info[1].As<Napi::Function>();
  }
  kiln::BuildOptions options = build_options_from(info[0].As<Napi::Object>());
  auto cancel = std::make_shared<std::atomic<bool>>(false);
  auto* worker = new BuildWorker(env, std::move(options), on_progress, cancel);
  Napi::Object handle = Napi::Object::New(env);
  handle.Set("promise", worker->promise());
  handle.Set("cancel", Napi::Function::New(env, [cancel](const Napi::CallbackInfo&) { cancel->store(true); }));
  worker->Queue();
  return handle;
}

// inspect(path, verifySections) -> header JSON text. Reads (and, verifySections, hashes) the file on
// the calling thread: engines are inspected by tools and start-up checks, not on a serving path.
Napi::Value Inspect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "inspect(path): path must be a string");
  const bool sections = info.Length() < 2 || info[1].IsUndefined() || info[1].ToBoolean().Value();
  try {
    return Napi::String::New(env, kiln::inspect(info[0].As<Napi::String>().Utf8Value(),
                                                sections ? kiln::SectionCheck::Sha256 : kiln::SectionCheck::Bounds));
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
}

// The CUDA target fingerprint of this machine's GPU, or null where this build has no CUDA backend or
// no GPU is visible (a call, not a property: it initializes the CUDA runtime).
Napi::Value CudaTargetFingerprint(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
#if KILN_CUDA
  try {
    if (kiln::cuda::device_available()) return Napi::String::New(env, kiln::cuda::target_fingerprint());
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
#endif
  return env.Null();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("build", Napi::Function::New(env, Build, "build"));
  exports.Set("inspect", Napi::Function::New(env, Inspect, "inspect"));
  exports.Set("version", Napi::String::New(env, kiln::library_version()));
  exports.Set("targetFingerprint", Napi::String::New(env, kiln::cpu_target_fingerprint()));
  exports.Set("cudaTargetFingerprint", Napi::Function::New(env, CudaTargetFingerprint, "cudaTargetFingerprint"));
  kiln_binding::InitServing(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(kiln, Init)
