// The sampler's truncation as a full sort of the vocab (how runtime/sampler.cpp chose tokens before
// its selection went progressive): the oracle of sampler_test.cpp. bench/cpu/sampler.cpp keeps its
// own verbatim copy of the old sampler instead, because it times the old cost (partial sort under
// top_k, the logprobs pass), which this oracle does not reproduce.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "runtime/sampler.h"

namespace kiln::reference {

// Draws with the uniform `u` in [0, 1) from `logits` (temperature > 0) after top-k, min-p, top-p.
inline int32_t sample_sorted(const std::vector<float>& logits, const SamplingParams& p, double u) {
  std::vector<std::pair<float, int32_t>> c(logits.size());
  for (size_t t = 0; t < logits.size(); ++t) c[t] = {logits[t] / p.temperature, static_cast<int32_t>(t)};
  std::sort(c.begin(), c.end(), [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
  size_t keep = c.size();
  if (p.top_k > 0) keep = std::min(keep, static_cast<size_t>(p.top_k));
  std::vector<double> probs(keep);
  const double top = c[0].first;
  double total = 0.0;
  for (size_t i = 0; i < keep; ++i) total += probs[i] = std::exp(static_cast<double>(c[i].first) - top);
  for (double& q : probs) q /= total;
  if (p.min_p > 0.0f) {
    size_t n = 1;
    while (n < keep && probs[n] >= p.min_p * probs[0]) ++n;
    keep = n;
  }
  if (p.top_p < 1.0f) {
    double mass = 0.0;
    size_t n = 0;
    while (n < keep) {
      mass += probs[n++];
      if (mass >= p.top_p) break;
    }
    keep = n;
  }
  double kept = 0.0;
  for (size_t i = 0; i < keep; ++i) kept += probs[i];
  const double r = u * kept;
  double acc = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    acc += probs[i];
    if (r < acc) return c[i].second;
  }
  return c[keep - 1].second;
}

// The n most likely tokens, most likely first, by a partial sort of every index.
inline std::vector<int32_t> top_sorted(const std::vector<float>& logits, int64_t n) {
  std::vector<int32_t> order(logits.size());
  for (size_t t = 0; t < order.size(); ++t) order[t] = static_cast<int32_t>(t);
  n = std::min<int64_t>(n, static_cast<int64_t>(order.size()));
  std::partial_sort(order.begin(), order.begin() + n, order.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  order.resize(static_cast<size_t>(n));
  return order;
}

// The sampler's first uniform for `seed`: choose() draws one per sampled token.
inline double first_uniform(uint64_t seed) {
  std::mt19937_64 rng(seed);
  return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

}  // namespace kiln::reference
