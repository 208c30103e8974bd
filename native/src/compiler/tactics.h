#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/layout.h"
#include "core/thread_pool.h"

namespace kiln {

// y[m, n] = (x[m, k] · w[n, k]ᵀ) · scale · row_scale[n] + bias[n]; x and y fp32, w in any weight dtype.
struct GemmProblem {
  const float* x = nullptr;
  int64_t m = 0;
  int64_t k = 0;
  const uint8_t* w = nullptr;
  DType w_dtype = DType::F32;
  WeightLayout layout = WeightLayout::Row;
  int64_t n = 0;
  const float* row_scale = nullptr;  // int8 per-channel scales
  float scale = 1.0f;                // fp8: weight scale x input scale
  const float* bias = nullptr;
  float* y = nullptr;
};

// One way to run an op. Tactics are data: the autotuner times them on the target and records the
// winner's name per shape and batch bucket in the engine; the runtime looks the name up once.
struct GemmTactic {
  std::string name;
  std::string backend;     // "cpu"; the CUDA backend registers its own
  WeightLayout layout;     // the weight layout the tactic reads
  int threads;             // 0 = every thread of the pool
  void (*run)(const GemmProblem& problem, ThreadPool& pool, int threads);

  bool supports(int64_t n, int64_t k) const { return layout_supports(layout, n, k); }
};

// Per-op registries of tactics ("gemm" is the only tuned op so far).
class TacticRegistry {
 public:
  // The process-wide registry with every compiled-in backend's tactics.
  static const TacticRegistry& instance();

  void add_gemm(GemmTactic tactic);
  const std::vector<GemmTactic>& gemm() const { return gemm_; }
  std::vector<const GemmTactic*> gemm_candidates(int64_t n, int64_t k) const;
  const GemmTactic* find_gemm(const std::string& name) const;
  // Used when an engine was built without autotuning: row layout, all threads.
  const GemmTactic& default_gemm() const;

 private:
  std::vector<GemmTactic> gemm_;
};

}  // namespace kiln
