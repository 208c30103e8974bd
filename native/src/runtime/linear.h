#pragma once

#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "engine/engine.h"
#include "runtime/gemm_plan.h"

namespace kiln {

// Sees the input of every linear during a forward, and each layer's keys (after RoPE) and values as
// the KV cache receives them (under kv_cache_observation_name); calibration records amax through it.
class ActivationObserver {
 public:
  virtual ~ActivationObserver() = default;
  virtual void observe(const std::string& weight, const float* x, int64_t count) = 0;
};

// "kv_cache.<layer>.k" / ".v": the observation names of a layer's cached keys and values.
inline std::string kv_cache_observation_name(int64_t layer, bool values) {
  return "kv_cache." + std::to_string(layer) + (values ? ".v" : ".k");
}

// One projection of the engine bound to its tensors, scales and tuned tactics.
class Linear {
 public:
  Linear() = default;
  // `weight` is a [out, in] tensor of the engine; `bias` may be empty or absent from the engine.
  Linear(const Engine& engine, const std::string& weight, const std::string& bias, int64_t out, int64_t in,
         const GemmPlan& plan);

  // y[m, out] = x[m, in] · Wᵀ (+ bias). `scratch` holds the fp8-quantized input when needed.
  void forward(const float* x, int64_t m, float* y, ThreadPool& pool, std::vector<float>& scratch,
               ActivationObserver* observer) const;

  int64_t out_features() const { return out_; }
  const std::string& weight_name() const { return weight_name_; }

 private:
  std::string weight_name_;
  const TensorView* weight_ = nullptr;
  const float* bias_ = nullptr;
  const float* row_scale_ = nullptr;
  float weight_scale_ = 1.0f;
  float input_scale_ = 0.0f;  // > 0: the input is quantized to fp8 with this scale
  int64_t out_ = 0;
  int64_t in_ = 0;
  const GemmPlan* plan_ = nullptr;
};

}  // namespace kiln
