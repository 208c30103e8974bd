#pragma once

// Attention of a decode-only step (every sequence adds one token) in a single kernel. The general
// path (kernels.h) runs three: RoPE + cache write, tiled attention, split merge; at batch 1 each is
// a few microseconds of pure latency per layer. Here each block rotates its own query heads and, in
// the block whose key range ends at the new token, that token's key; it writes the new key and value
// into the cache and takes them from registers rather than reading them back. Keys and values are
// read as vectors of 8 elements straight from the cache (the first round before the kernel waits for
// the QKV projection), all query heads of a GQA group per block so each row is loaded once, and the
// split-KV partial states are merged by the block holding the new token: the head's split blocks run
// as one thread-block cluster and it reads their partials over distributed shared memory
// (KILN_CUDA_DECODE_CLUSTER=0: through global memory instead, by the last block of a head to finish,
// with an arrival counter it resets so graph replays find it zero). An fp8 cache is read 8 bytes per
// lane rather than 16: each lane keeps its 8 dimensions, so the kernel keeps the bf16 layout's
// registers (16 e4m3 per lane would double q and acc, past the register file at a GQA group of 8).

#include "backend/cuda/kernels.h"

namespace kiln::cuda {

struct DecodeAttentionArgs {
  const float* qkv = nullptr;  // [tokens, q_dim + 2 kv_dim] as the QKV projection wrote it (unrotated)
  const float* bias = nullptr;
  const float* q_norm = nullptr;  // QK norm (Qwen3), as RopeKvArgs: both or neither
  const float* k_norm = nullptr;
  float norm_eps = 0.0f;
  PagedStep step;
  const float* cos = nullptr;  // [positions, head_dim / 2]
  const float* sin = nullptr;
  KvCacheArgs kv;  // this layer's pages
  int64_t window = 0;  // 0 = the whole prefix
  float scale = 1.0f;
  bf16* out = nullptr;  // [tokens, heads * head_dim]
  fp8* out_fp8 = nullptr;  // when set, e4m3(value / out_scale) goes here instead
  float out_scale = 1.0f;
  // At most this many blocks share one head's keys; each uses as many as its context needs (whole
  // rounds of keys per block), so a short context is not spread thin. More than 1 needs both buffers.
  int64_t splits = 1;
  float* partials = nullptr;    // [tokens, heads, splits, head_dim + 2]
  int32_t* counters = nullptr;  // [tokens, kv_heads], all zero before the first launch; left zero
};

void decode_attention(const DecodeAttentionArgs& args, cudaStream_t stream);
// head_dim 32, 64 or 128 and a GQA group of 1, 2, 4 or 8 query heads.
bool decode_attention_supports(int64_t heads, int64_t kv_heads, int64_t head_dim);

}  // namespace kiln::cuda
