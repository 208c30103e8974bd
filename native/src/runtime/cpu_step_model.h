#pragma once

#include <memory>
#include <vector>

#include "core/thread_pool.h"
#include "runtime/kv_cache.h"
#include "runtime/model.h"
#include "runtime/step_model.h"

namespace kiln {

// The CPU Model behind the StepModel seam. Its cache is ordinary process memory, sized from the
// host's memory less the engine file and never larger than the configured batch can use.
class CpuStepModel : public StepModel {
 public:
  CpuStepModel(std::shared_ptr<const Engine> engine, const StepModelOptions& options);

  const ModelConfig& config() const override { return model_.config(); }
  const char* backend() const override { return "cpu"; }
  const KvCacheSize& kv_size() const override { return size_; }
  DType kv_dtype() const override { return cache_.dtype(); }
  bool greedy_without_logits() const override { return false; }
  void forward(const ForwardBatch& batch, const RowRequest* rows, int32_t* tokens, float* logits) override;

 private:
  ThreadPool pool_;
  Model model_;
  KvCacheSize size_;
  KvCache cache_;
};

// The CPU budget the fraction applies to: host memory less the engine's own bytes.
KvMemoryBudget cpu_kv_budget(const Engine& engine, const StepModelOptions& options);

}  // namespace kiln
