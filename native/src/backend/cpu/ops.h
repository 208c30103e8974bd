#pragma once

#include <cstdint>

#include "core/thread_pool.h"

namespace kiln {

// y = x · rsqrt(mean(x²) + eps) · gamma per row of `dim` values, as transformers' RMSNorm in fp32;
// gamma may be null when it was folded into the next projection. x and y may alias.
void rms_norm(const float* x, int64_t x_stride, float* y, int64_t y_stride, int64_t rows, int64_t dim,
              const float* gamma, float eps);

// Rotates `heads` consecutive vectors of `head_dim` in place with the half-split (rotate_half)
// convention of HF Llama: pairs are (i, i + head_dim/2); cos/sin hold head_dim/2 values.
void apply_rope(float* x, int64_t heads, int64_t head_dim, const float* cos, const float* sin);

// out[m, i] = silu(gate_up[m, i]) · gate_up[m, inter + i]
void silu_mul(const float* gate_up, int64_t rows, int64_t inter, float* out);

struct AttentionArgs {
  const float* q = nullptr;  // query row m, head h at q + m * q_stride + h * head_dim
  int64_t q_stride = 0;
  int64_t m = 0;             // queries, at positions pos0 .. pos0 + m - 1
  int64_t pos0 = 0;
  const float* const* k_rows = nullptr;  // per position: kv_heads * head_dim values
  const float* const* v_rows = nullptr;
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t window = 0;  // 0 = attend to the whole prefix
  float scale = 1.0f;
  float* out = nullptr;  // [m, heads * head_dim]
};

// Causal softmax attention with grouped KV heads, fp32, parallel over (head, query).
void attention(const AttentionArgs& args, ThreadPool& pool);

}  // namespace kiln
