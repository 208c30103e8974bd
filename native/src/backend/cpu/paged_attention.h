#pragma once

#include <cstdint>

#include "core/dtype.h"
#include "core/thread_pool.h"

namespace kiln {

// One layer of causal attention for a mixed batch: every query token belongs to a sequence and sits
// at a position of it; its keys and values are read through that sequence's block table from the
// paged cache (layout of runtime/kv_cache.h). Prefill chunks and decode tokens of different
// sequences are all just query tokens here.
struct PagedAttentionArgs {
  const float* q = nullptr;  // token t, head h at q + t * q_stride + h * head_dim
  int64_t q_stride = 0;
  int64_t tokens = 0;
  const int32_t* token_sequence = nullptr;  // [tokens] index into block_tables
  const int64_t* token_position = nullptr;  // [tokens] attends to positions [.., position]
  const int32_t* const* block_tables = nullptr;
  const uint8_t* keys = nullptr;  // this layer's pages
  const uint8_t* values = nullptr;
  DType kv_dtype = DType::F32;  // f32 or bf16
  int64_t page_size = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t window = 0;  // 0 = attend to the whole prefix
  float scale = 1.0f;
  float* out = nullptr;  // [tokens, heads * head_dim]
};

// fp32 softmax attention with grouped KV heads, parallel over (token, head). Each output depends
// only on its own query and its sequence's cache, summed in position order, so a token gets the same
// bits whatever else shares the batch.
void paged_attention(const PagedAttentionArgs& args, ThreadPool& pool);

}  // namespace kiln
