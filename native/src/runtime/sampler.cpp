#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace kiln {

Sampler::Sampler(SamplingParams params, uint64_t seed_fallback)
    : params_(params), rng_(params.has_seed ? params.seed : seed_fallback) {
  const SamplingParams& p = params_;
  if (!(p.temperature >= 0.0f) || !std::isfinite(p.temperature)) throw Error("sampling: temperature must be >= 0");
  if (p.top_k < 0) throw Error("sampling: topK must be >= 0");
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) throw Error("sampling: topP must be in (0, 1]");
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) throw Error("sampling: minP must be in [0, 1]");
  if (!(p.repetition_penalty > 0.0f) || !std::isfinite(p.repetition_penalty)) throw Error("sampling: repetitionPenalty must be > 0");
  if (!std::isfinite(p.frequency_penalty) || !std::isfinite(p.presence_penalty)) {
    throw Error("sampling: frequencyPenalty and presencePenalty must be finite");
  }
}

double Sampler::uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

TokenChoice Sampler::choose(float* logits, int64_t vocab, const std::vector<int32_t>& tokens, int64_t prompt_len) {
  const SamplingParams& p = params_;
  if (p.repetition_penalty != 1.0f) {
    std::vector<bool> seen(static_cast<size_t>(vocab), false);
    for (int32_t t : tokens) {
      if (t < 0 || t >= vocab || seen[static_cast<size_t>(t)]) continue;
      seen[static_cast<size_t>(t)] = true;
      float& l = logits[t];
      l = l > 0 ? l / p.repetition_penalty : l * p.repetition_penalty;
    }
  }
  if (p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f) {
    counts_.assign(static_cast<size_t>(vocab), 0);
    for (size_t i = static_cast<size_t>(prompt_len); i < tokens.size(); ++i) {
      if (tokens[i] >= 0 && tokens[i] < vocab) ++counts_[static_cast<size_t>(tokens[i])];
    }
    for (int64_t t = 0; t < vocab; ++t) {
      const int32_t c = counts_[static_cast<size_t>(t)];
      if (c > 0) logits[t] -= p.frequency_penalty * static_cast<float>(c) + p.presence_penalty;
    }
  }

  TokenChoice out;
  // log-softmax normalizer of the penalized logits, in double so tiny probabilities keep digits.
  double log_norm = 0.0;
  if (p.logprobs >= 0) {
    const float max_logit = *std::max_element(logits, logits + vocab);
    double sum = 0.0;
    for (int64_t t = 0; t < vocab; ++t) sum += std::exp(static_cast<double>(logits[t] - max_logit));
    log_norm = static_cast<double>(max_logit) + std::log(sum);
  }
  const auto logprob_of = [&](int32_t t) { return static_cast<float>(static_cast<double>(logits[t]) - log_norm); };
  const auto fill_logprobs = [&]() {
    if (p.logprobs < 0) return;
    out.logprob = logprob_of(out.token);
    const int64_t n = std::min<int64_t>(p.logprobs, vocab);
    std::vector<int32_t> order(static_cast<size_t>(vocab));
    for (int64_t t = 0; t < vocab; ++t) order[static_cast<size_t>(t)] = static_cast<int32_t>(t);
    std::partial_sort(order.begin(), order.begin() + n, order.end(),
                      [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
    for (int64_t i = 0; i < n; ++i) out.top.emplace_back(order[static_cast<size_t>(i)], logprob_of(order[static_cast<size_t>(i)]));
  };

  if (p.temperature == 0.0f) {
    out.token = static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
    fill_logprobs();
    return out;
  }

  // Candidates sorted by logit, most likely first (index order on ties, so draws are reproducible).
  candidates_.resize(static_cast<size_t>(vocab));
  for (int64_t t = 0; t < vocab; ++t) candidates_[static_cast<size_t>(t)] = {logits[t] / p.temperature, static_cast<int32_t>(t)};
  const auto by_logit = [](const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t keep = candidates_.size();
  if (p.top_k > 0 && static_cast<size_t>(p.top_k) < keep) {
    keep = static_cast<size_t>(p.top_k);
    std::partial_sort(candidates_.begin(), candidates_.begin() + static_cast<std::ptrdiff_t>(keep), candidates_.end(), by_logit);
  } else {
    std::sort(candidates_.begin(), candidates_.end(), by_logit);
  }
  std::vector<double> probs(keep);
  const double top = candidates_[0].first;
  double total = 0.0;
  for (size_t i = 0; i < keep; ++i) total += probs[i] = std::exp(static_cast<double>(candidates_[i].first) - top);
  for (double& q : probs) q /= total;
  if (p.min_p > 0.0f) {
    const double floor = p.min_p * probs[0];
    size_t n = 1;
    while (n < keep && probs[n] >= floor) ++n;
    keep = n;
  }
  if (p.top_p < 1.0f) {
    // The smallest prefix whose mass reaches top_p.
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
  const double r = uniform() * kept;
  double acc = 0.0;
  out.token = candidates_[keep - 1].second;
  for (size_t i = 0; i < keep; ++i) {
    acc += probs[i];
    if (r < acc) {
      out.token = candidates_[i].second;
      break;
    }
  }
  fill_logprobs();
  return out;
}

}  // namespace kiln
