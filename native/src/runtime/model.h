#pragma once

#include <memory>
#include <vector>

#include "core/thread_pool.h"
#include "engine/engine.h"
#include "runtime/gemm_plan.h"
#include "runtime/kv_cache.h"
#include "runtime/linear.h"
#include "runtime/rope.h"

namespace kiln {

// The decoder forward pass over an engine. Keeps its own scratch buffers, so one Model serves one
// caller at a time; the KV cache is passed in, so the cache layout is the caller's choice.
class Model {
 public:
  Model(std::shared_ptr<const Engine> engine, ThreadPool& pool);

  const ModelConfig& config() const { return engine_->config(); }
  const Engine& engine() const { return *engine_; }
  // Longest sequence the engine was built for (positions of the RoPE table).
  int64_t max_seq_len() const { return max_seq_len_; }

  // Runs `n` tokens at positions [start, start + n) of one sequence, writing their keys and values
  // into `cache` and the vocab_size logits of the last of them into `logits`.
  void forward(const int32_t* tokens, int64_t n, int64_t start, KvCache& cache, float* logits,
               ActivationObserver* observer = nullptr);

  std::unique_ptr<KvCache> new_contiguous_cache() const;

 private:
  struct Layer {
    const float* attn_norm = nullptr;  // null when folded into qkv
    const float* mlp_norm = nullptr;
    const float* q_norm = nullptr;
    const float* k_norm = nullptr;
    Linear qkv, o, gate_up, down;
  };

  const float* optional_vector(const std::string& name, int64_t length) const;

  std::shared_ptr<const Engine> engine_;
  ThreadPool& pool_;
  GemmPlan plan_;
  int64_t max_seq_len_ = 0;
  std::unique_ptr<RopeTable> rope_;
  const TensorView* embed_ = nullptr;
  const float* final_norm_ = nullptr;
  Linear lm_head_;
  std::vector<Layer> layers_;

  std::vector<float> h_, x_, qkv_, attn_, proj_, gate_up_, act_, scratch_;
  std::vector<const float*> k_rows_, v_rows_;
};

}  // namespace kiln
