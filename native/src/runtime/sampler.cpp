#include "runtime/sampler.h"

#include <algorithm>
#include <bit>
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

bool Sampler::raw_logits_suffice() const {
  const SamplingParams& p = params_;
  return p.repetition_penalty == 1.0f && p.frequency_penalty == 0.0f && p.presence_penalty == 0.0f && p.logprobs < 0;
}

namespace {

// Most likely first, the lower index on ties, as one integer: a strict total order that sorts as
// fast as integers do, so every selection below picks the same candidates in the same order as a
// full sort would.
uint64_t candidate(float logit, int32_t token) {
  // + 0 turns -0 into +0: the two compare equal as floats and must tie here too.
  uint32_t b = std::bit_cast<uint32_t>(logit + 0.0f);
  b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);  // now ascending with the float
  return (static_cast<uint64_t>(~b) << 32) | static_cast<uint32_t>(token);
}

float logit_of(uint64_t c) {
  const uint32_t b = ~static_cast<uint32_t>(c >> 32);
  return std::bit_cast<float>((b & 0x80000000u) ? (b & 0x7fffffffu) : ~b);
}

int32_t token_of(uint64_t c) { return static_cast<int32_t>(static_cast<uint32_t>(c)); }

// The first of the largest logits, as torch.argmax. Eight running maxima vectorise where
// max_element's running index does not; finding the first index equal to the max is then cheap.
int32_t first_argmax(const float* x, int64_t n) {
  constexpr int64_t kLanes = 8;
  float lanes[kLanes];
  std::fill(lanes, lanes + kLanes, x[0]);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) lanes[j] = x[i + j] > lanes[j] ? x[i + j] : lanes[j];
  }
  float m = lanes[0];
  for (int64_t j = 1; j < kLanes; ++j) m = lanes[j] > m ? lanes[j] : m;
  for (; i < n; ++i) m = x[i] > m ? x[i] : m;
  for (int64_t t = 0; t < n; ++t) {
    if (x[t] == m) return static_cast<int32_t>(t);
  }
  return 0;  // a NaN first logit: what max_element gives too
}

constexpr size_t kFirstPrefix = 64;
constexpr size_t kPrefixGrowth = 4;
constexpr size_t kHeapSelectMax = 256;

}  // namespace

// Top-k / min-p / top-p without sorting the vocab: the normaliser comes from one linear pass, then
// ever larger sorted prefixes are selected until the kept set is decided within the prefix. The
// probabilities, their sums and the comparisons are the same expressions over the same sorted
// candidates as a full sort would give, so for one uniform draw the same token comes out (the
// full-vocab normaliser is summed in index order rather than logit order, over float exps: a
// relative difference below 1e-7, which moves a draw or a cut only when it lands that close to a
// boundary).
int32_t Sampler::draw_truncated(const float* logits, int64_t vocab, float top, double* total_out) {
  const SamplingParams& p = params_;
  const size_t v = static_cast<size_t>(vocab);
  const double top_d = top;
  // With top_k the probabilities are normalised over the top_k candidates alone.
  const bool top_k_limits = p.top_k > 0 && static_cast<size_t>(p.top_k) < v;
  const size_t limit = top_k_limits ? static_cast<size_t>(p.top_k) : v;
  candidates_.resize(v);
  double total = 0.0;
  for (size_t t = 0; t < v; ++t) {
    const float l = logits[t] / p.temperature;
    candidates_[t] = candidate(l, static_cast<int32_t>(t));
    if (!top_k_limits) total += std::exp(l - top);
  }
  *total_out = top_k_limits ? -1.0 : total;

  probs_.clear();
  size_t sorted = 0;
  size_t prefix = top_k_limits ? limit : std::min(kFirstPrefix, limit);
  size_t keep = 0;
  for (;;) {
    const auto first = candidates_.begin() + static_cast<std::ptrdiff_t>(sorted);
    const auto last = candidates_.begin() + static_cast<std::ptrdiff_t>(prefix);
    // Everything from `sorted` on ranks below the sorted prefix, so only that tail is selected from.
    // A heap select for few: most of the tail fails one comparison against the heap's top; for many
    // the heap's log factor costs more than a quickselect.
    if (prefix == v) {
      std::sort(first, last);
    } else if (prefix - sorted <= kHeapSelectMax) {
      std::partial_sort(first, last, candidates_.end());
    } else {
      std::nth_element(first, last, candidates_.end());
      std::sort(first, last);
    }
    for (size_t i = sorted; i < prefix; ++i) probs_.push_back(std::exp(static_cast<double>(logit_of(candidates_[i])) - top_d));
    if (top_k_limits) {
      for (double w : probs_) total += w;
    }
    for (size_t i = top_k_limits ? 0 : sorted; i < prefix; ++i) probs_[i] /= total;
    sorted = prefix;

    bool decided = prefix == limit;
    size_t n = prefix;
    if (p.min_p > 0.0f) {
      const double floor = p.min_p * probs_[0];
      size_t m = 1;
      while (m < prefix && probs_[m] >= floor) ++m;
      if (m < prefix) decided = true;
      n = m;
    }
    if (p.top_p < 1.0f) {
      // The smallest prefix whose mass reaches top_p; reached within n, it is the answer whatever
      // lies beyond the sorted prefix.
      double mass = 0.0;
      size_t c = 0;
      while (c < n) {
        mass += probs_[c++];
        if (mass >= p.top_p) break;
      }
      if (mass >= p.top_p) {
        decided = true;
        n = c;
      }
    }
    if (decided) {
      keep = n;
      break;
    }
    prefix = std::min(prefix * kPrefixGrowth, limit);
  }

  double kept = 0.0;
  for (size_t i = 0; i < keep; ++i) kept += probs_[i];
  const double r = next_uniform() * kept;
  double acc = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    acc += probs_[i];
    if (r < acc) return token_of(candidates_[i]);
  }
  return token_of(candidates_[keep - 1]);
}

// Temperature alone: inverse CDF in token order, no sort. The distribution is the softmax as before
// this path existed, but a seed draws a different token than it did then (seeds reproduce within
// one version).
int32_t Sampler::draw_untruncated(const float* logits, int64_t vocab, float top, double* total_out) {
  const size_t v = static_cast<size_t>(vocab);
  weights_.resize(v);
  double total = 0.0;
  // Float exp costs about two thirds of double exp per entry, and its ~1e-7 relative error per
  // weight is far below anything a draw can show; the sum stays double.
  for (size_t t = 0; t < v; ++t) {
    total += weights_[t] = std::exp(logits[t] / params_.temperature - top);
  }
  *total_out = total;
  const double r = next_uniform() * total;
  double acc = 0.0;
  int32_t last_possible = -1;
  for (size_t t = 0; t < v; ++t) {
    if (weights_[t] == 0.0) continue;
    acc += weights_[t];
    last_possible = static_cast<int32_t>(t);
    if (r < acc) return last_possible;
  }
  // Rounding left r at or past the sum: the last token that could be drawn.
  return last_possible;
}

void Sampler::fill_top(const float* logits, int64_t vocab, double log_norm, TokenChoice& out) {
  const size_t n = static_cast<size_t>(std::min<int64_t>(params_.logprobs, vocab));
  if (n == 0) return;
  const auto better = [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  // A heap of the n best so far with the worst on top: one pass, O(log n) only on a newcomer.
  top_.clear();
  for (int32_t t = 0; t < static_cast<int32_t>(vocab); ++t) {
    if (top_.size() < n) {
      top_.push_back(t);
      std::push_heap(top_.begin(), top_.end(), better);
    } else if (better(t, top_.front())) {
      std::pop_heap(top_.begin(), top_.end(), better);
      top_.back() = t;
      std::push_heap(top_.begin(), top_.end(), better);
    }
  }
  std::sort_heap(top_.begin(), top_.end(), better);
  out.top.reserve(n);
  for (int32_t t : top_) out.top.emplace_back(t, static_cast<float>(static_cast<double>(logits[t]) - log_norm));
}

TokenChoice Sampler::choose(float* logits, int64_t vocab, const std::vector<int32_t>& tokens, int64_t prompt_len) {
  const SamplingParams& p = params_;
  if (p.repetition_penalty != 1.0f) {
    seen_.assign(static_cast<size_t>(vocab), 0);
    for (int32_t t : tokens) {
      if (t < 0 || t >= vocab || seen_[static_cast<size_t>(t)]) continue;
      seen_[static_cast<size_t>(t)] = 1;
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
  const int32_t argmax = first_argmax(logits, vocab);
  const float max_logit = logits[argmax];
  // The sampling normaliser over the whole vocab at temperature 1 is the log-softmax's too; -1 when
  // sampling did not compute it.
  double total = -1.0;
  if (p.temperature == 0.0f) {
    out.token = argmax;
  } else {
    // Dividing by a positive temperature keeps the order, so the largest scaled logit is this.
    const float top = max_logit / p.temperature;
    if (p.top_k == 0 && p.top_p >= 1.0f && p.min_p == 0.0f) {
      out.token = draw_untruncated(logits, vocab, top, &total);
    } else {
      out.token = draw_truncated(logits, vocab, top, &total);
    }
  }
  if (p.logprobs < 0) return out;

  // Log-softmax of the penalized logits, in double so tiny probabilities keep digits.
  if (p.temperature != 1.0f || total < 0.0) {
    total = 0.0;
    for (int64_t t = 0; t < vocab; ++t) total += std::exp(static_cast<double>(logits[t]) - static_cast<double>(max_logit));
  }
  const double log_norm = static_cast<double>(max_logit) + std::log(total);
  out.logprob = static_cast<float>(static_cast<double>(logits[out.token]) - log_norm);
  fill_top(logits, vocab, log_norm, out);
  return out;
}

}  // namespace kiln
