#pragma once

#include <memory>
#include <vector>

#include "core/thread_pool.h"
#include "engine/engine.h"
#include "runtime/forward_batch.h"
#include "runtime/gemm_plan.h"
#include "runtime/kv_cache.h"
#include "runtime/linear.h"
#include "runtime/rope.h"

namespace kiln {

// The decoder forward pass over an engine. Keeps its own scratch buffers, so one Model serves one
// caller at a time; the paged KV cache and the block tables are the caller's (the serving runtime's
// BlockManager decides which pages a sequence uses).
class Model {
 public:
  Model(std::shared_ptr<const Engine> engine, ThreadPool& pool);

  const ModelConfig& config() const { return engine_->config(); }
  const Engine& engine() const { return *engine_; }
  // Longest sequence the engine was built for (positions of the RoPE table).
  int64_t max_seq_len() const { return max_seq_len_; }

  // Runs a mixed batch (prefill chunks and decode tokens of several sequences) in one pass: the
  // GEMMs see every token of the batch at once, attention reads each sequence through its block
  // table. Writes every slice's keys and values into `cache` and, for each slice that wants them,
  // one row of vocab_size logits into `logits`, in slice order.
  void forward(const ForwardBatch& batch, KvCache& cache, float* logits, ActivationObserver* observer = nullptr);

  // One sequence with a cache of its own (pages 0, 1, ... in order) up to max_seq_len: for callers
  // that run a single prompt (greedy generation, calibration) through the same batched forward.
  struct SingleSequence {
    KvCache cache;
    std::vector<int32_t> block_table;
  };
  SingleSequence new_single_sequence() const;
  // Runs `n` tokens at positions [start, start + n) of `sequence`; logits of the last one.
  void forward(const int32_t* tokens, int64_t n, int64_t start, SingleSequence& sequence, float* logits,
               ActivationObserver* observer = nullptr);

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
  std::vector<int32_t> token_sequence_;
  std::vector<int64_t> token_position_;
  std::vector<const int32_t*> block_tables_;
};

}  // namespace kiln
