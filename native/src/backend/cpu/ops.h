#pragma once

#include <cstdint>


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

}  // namespace kiln
