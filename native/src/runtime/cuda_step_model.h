#pragma once

#if KILN_CUDA

#include <memory>
#include <vector>

#include "backend/cuda/model.h"
#include "runtime/step_model.h"

namespace kiln {

// The CUDA model behind the StepModel seam: weights on the device, a bf16 or fp8 paged cache sized from
// the device memory left once the weights and the scratch of the largest step are in place, and
// greedy and sampled tokens from the device (logits cross to the host only for the rows that need
// penalties or logprobs).
class CudaStepModel : public StepModel {
 public:
  CudaStepModel(std::shared_ptr<const Engine> engine, const StepModelOptions& options);

  const ModelConfig& config() const override { return model_.config(); }
  const char* backend() const override { return "cuda"; }
  const KvCacheSize& kv_size() const override { return size_; }
  DType kv_dtype() const override { return cache_->dtype(); }
  bool greedy_without_logits() const override { return true; }
  bool samples_without_logits() const override { return true; }
  void forward(const ForwardBatch& batch, const RowRequest* rows, int32_t* tokens, float* logits) override;

 private:
  cuda::CudaModel model_;
  KvCacheSize size_;
  std::unique_ptr<cuda::CudaKvCache> cache_;
  std::vector<int32_t> token_scratch_;
};

}  // namespace kiln

#endif
