#include "runtime/step_model.h"

#include "core/error.h"
#include "runtime/cpu_step_model.h"
#include "runtime/cuda_step_model.h"

namespace kiln {

std::string engine_backend(const Engine& engine) {
  const Json& h = engine.header();
  const bool cuda = h.contains("target") && h["target"].is_object() && h["target"].value("backend", "") == "cuda";
  return cuda ? "cuda" : "cpu";
}

std::unique_ptr<StepModel> make_step_model(std::shared_ptr<const Engine> engine, const StepModelOptions& options) {
  check_kv_sizing_options(options.kv);
  if (engine_backend(*engine) == "cuda") {
#if KILN_CUDA
    return std::make_unique<CudaStepModel>(std::move(engine), options);
#else
    throw Error(engine->source() + ": engine was built for the CUDA target \"" +
                engine->header()["target"].value("fingerprint", "?") +
                "\" and this build of kiln has no CUDA backend (configure native/ with -DKILN_CUDA=ON)");
#endif
  }
  return std::make_unique<CpuStepModel>(std::move(engine), options);
}

}  // namespace kiln
