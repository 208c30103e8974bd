#include "backend/cpu/ops.h"

#include <algorithm>
#include <cmath>
#include <vector>

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

void attention(const AttentionArgs& a, ThreadPool& pool) {
  const int64_t group = a.heads / a.kv_heads;
  const int64_t tasks = a.heads * a.m;
  pool.run(static_cast<int>(tasks), pool.size(), [&](int task) {
    const int64_t h = task / a.m;
    const int64_t i = task % a.m;
    const int64_t pos = a.pos0 + i;
    const int64_t first = a.window > 0 ? std::max<int64_t>(0, pos - a.window + 1) : 0;
    const float* q = a.q + i * a.q_stride + h * a.head_dim;
    const int64_t kv_offset = (h / group) * a.head_dim;
    thread_local std::vector<float> scores;
    scores.resize(static_cast<size_t>(pos - first + 1));
    float max_score = -INFINITY;
    for (int64_t j = first; j <= pos; ++j) {
      const float* k = a.k_rows[j] + kv_offset;
      float dot = 0.0f;
      for (int64_t d = 0; d < a.head_dim; ++d) dot += q[d] * k[d];
      const float s = dot * a.scale;
      scores[static_cast<size_t>(j - first)] = s;
      max_score = std::max(max_score, s);
    }
    float total = 0.0f;
    for (float& s : scores) {
      s = std::exp(s - max_score);
      total += s;
    }
    float* out = a.out + i * a.heads * a.head_dim + h * a.head_dim;
    std::fill(out, out + a.head_dim, 0.0f);
    for (int64_t j = first; j <= pos; ++j) {
      const float p = scores[static_cast<size_t>(j - first)] / total;
      const float* v = a.v_rows[j] + kv_offset;
      for (int64_t d = 0; d < a.head_dim; ++d) out[d] += p * v[d];
    }
  });
}

}  // namespace kiln
