#include "backend/cpu/ops.h"

#include <cmath>

namespace kiln {

void rms_norm(const float* x, int64_t x_stride, float* y, int64_t y_stride, int64_t rows, int64_t dim,
              const float* gamma, float eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * x_stride;
    float* yr = y + r * y_stride;
    double squares = 0.0;
    for (int64_t i = 0; i < dim; ++i) squares += static_cast<double>(xr[i]) * xr[i];
    const float variance = static_cast<float>(squares / static_cast<double>(dim));
    const float inv = 1.0f / std::sqrt(variance + eps);
    for (int64_t i = 0; i < dim; ++i) {
      const float normed = xr[i] * inv;
      yr[i] = gamma ? gamma[i] * normed : normed;
    }
  }
}

void apply_rope(float* x, int64_t heads, int64_t head_dim, const float* cos, const float* sin) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* v = x + h * head_dim;
    for (int64_t i = 0; i < half; ++i) {
      const float a = v[i];
      const float b = v[i + half];
      v[i] = a * cos[i] - b * sin[i];
      v[i + half] = b * cos[i] + a * sin[i];
    }
  }
}

void silu_mul(const float* gate_up, int64_t rows, int64_t inter, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* g = gate_up + r * 2 * inter;
    const float* u = g + inter;
    float* o = out + r * inter;
    for (int64_t i = 0; i < inter; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  }
}

}  // namespace kiln
