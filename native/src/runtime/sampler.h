#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace kiln {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy (argmax, the first index on ties, as torch.argmax)
  int32_t top_k = 0;         // 0: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off; drops tokens below min_p x the most likely token's probability
  bool has_seed = false;
  uint64_t seed = 0;
  float repetition_penalty = 1.0f;  // HF: over prompt and output, positive logits / p, negative x p
  float frequency_penalty = 0.0f;   // OpenAI: over output only, logit -= f x count
  float presence_penalty = 0.0f;    // OpenAI: over output only, logit -= p if present
  int32_t logprobs = -1;            // < 0: none; n >= 0: the chosen token's logprob and the top n
};

struct TokenChoice {
  int32_t token = 0;
  float logprob = 0.0f;  // present when logprobs were asked for
  std::vector<std::pair<int32_t, float>> top;  // most likely first
};

// Chooses the next token of one request from its logits. Holds the request's random stream, so a
// request with a seed draws the same numbers whatever runs beside it or however often it is
// preempted (recompute keeps the sampler, not the cache).
//
// Order: penalties, then logprobs (log-softmax of the penalized logits, before temperature and
// truncation, so they describe the model rather than the sampling knobs), then greedy or
// temperature -> top-k -> softmax -> min-p -> top-p -> draw.
class Sampler {
 public:
  // `seed_fallback` seeds the stream when the request has no seed of its own.
  Sampler(SamplingParams params, uint64_t seed_fallback);

  // `logits` (vocab values) is modified in place. `prompt_len` leading entries of `tokens` are the
  // prompt, the rest are output tokens (for the penalties).
  TokenChoice choose(float* logits, int64_t vocab, const std::vector<int32_t>& tokens, int64_t prompt_len);

  const SamplingParams& params() const { return params_; }

  // True when no penalty and no logprobs apply, so the token can be picked elsewhere (a backend's
  // device) from the raw logits alone: the argmax at temperature 0, else a draw with params() and
  // next_uniform(). The one place that knows which knobs need the logits on the host.
  bool raw_logits_suffice() const;
  // The uniform number choose() would draw for its next token, [0, 1) with 53 bits (the same on
  // every standard library): choose() draws exactly one per sampled token, so a token drawn
  // elsewhere with this keeps the request's stream where choose() would have left it.
  double next_uniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

 private:
  int32_t draw_truncated(const float* logits, int64_t vocab, float top, double* total_out);
  int32_t draw_untruncated(const float* logits, int64_t vocab, float top, double* total_out);
  void fill_top(const float* logits, int64_t vocab, double log_norm, TokenChoice& out);

  SamplingParams params_;
  std::mt19937_64 rng_;
  // Buffers kept between tokens so that a step allocates nothing vocab-sized.
  std::vector<uint64_t> candidates_;  // scaled logit and token packed so that ascending is most likely first
  std::vector<double> weights_;
  std::vector<double> probs_;
  std::vector<int32_t> top_;
  std::vector<int32_t> counts_;
  std::vector<uint8_t> seen_;
};

}  // namespace kiln
