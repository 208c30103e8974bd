#include "runtime/rope.h"

#include <cmath>

namespace kiln {

namespace {

double llama3_inv_freq(double inv_freq, const RopeScaling& s) {
  const double pi = 3.14159265358979323846;
  const double old_context = static_cast<double>(s.original_max_position_embeddings);
  const double low_freq_wavelen = old_context / s.low_freq_factor;
  const double high_freq_wavelen = old_context / s.high_freq_factor;
  const double wavelen = 2.0 * pi / inv_freq;
  if (wavelen < high_freq_wavelen) return inv_freq;
  if (wavelen > low_freq_wavelen) return inv_freq / s.factor;
  const double smooth = (old_context / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
  return (1.0 - smooth) * inv_freq / s.factor + smooth * inv_freq;
}

}  // namespace

RopeTable::RopeTable(const ModelConfig& c, int64_t positions) : half_(c.head_dim / 2) {
  inv_freq_.resize(static_cast<size_t>(half_));
  for (int64_t i = 0; i < half_; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(c.head_dim);
    double f = 1.0 / static_cast<double>(std::pow(static_cast<float>(c.rope_theta), exponent));
    if (c.rope_scaling.kind == RopeScaling::Kind::Linear) f /= c.rope_scaling.factor;
    if (c.rope_scaling.kind == RopeScaling::Kind::Llama3) f = llama3_inv_freq(f, c.rope_scaling);
    inv_freq_[static_cast<size_t>(i)] = static_cast<float>(f);
  }
  cos_.resize(static_cast<size_t>(positions * half_));
  sin_.resize(cos_.size());
  for (int64_t p = 0; p < positions; ++p) {
    for (int64_t i = 0; i < half_; ++i) {
      const float angle = static_cast<float>(p) * inv_freq_[static_cast<size_t>(i)];
      cos_[static_cast<size_t>(p * half_ + i)] = std::cos(angle);
      sin_[static_cast<size_t>(p * half_ + i)] = std::sin(angle);
    }
  }
}

}  // namespace kiln
