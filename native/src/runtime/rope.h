#pragma once

#include <cstdint>
#include <vector>

#include "model/config.h"

namespace kiln {

// cos/sin of every position up to `positions`, computed the way transformers does in fp32:
// inv_freq = 1 / theta^(2i/d), adjusted by the rope scaling (linear: / factor; llama3: per-band
// smoothing), angle = position · inv_freq.
class RopeTable {
 public:
  RopeTable(const ModelConfig& config, int64_t positions);

  const float* cos(int64_t position) const { return cos_.data() + position * half_; }
  const float* sin(int64_t position) const { return sin_.data() + position * half_; }
  const std::vector<float>& inv_freq() const { return inv_freq_; }

 private:
  int64_t half_;
  std::vector<float> inv_freq_;
  std::vector<float> cos_;
  std::vector<float> sin_;
};

}  // namespace kiln
