// Token choice: greedy, the truncations, penalties, seeded reproducibility and sampled
// frequencies against the probabilities the parameters imply.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <map>
#include <random>

#include "core/error.h"
#include "runtime/sampler.h"
#include "sampler_reference.h"

namespace kiln::test {
namespace {

const std::vector<float> kLogits{1.0f, 3.0f, 2.0f, 0.5f, 2.5f, -1.0f};

std::vector<int32_t> draw(SamplingParams p, uint64_t fallback, int n, std::vector<float> logits = kLogits) {
  Sampler s(p, fallback);
  std::vector<int32_t> out;
  for (int i = 0; i < n; ++i) {
    std::vector<float> l = logits;
    out.push_back(s.choose(l.data(), static_cast<int64_t>(l.size()), {}, 0).token);
  }
  return out;
}

// softmax(logits / t) restricted to `keep` and renormalized.
std::map<int32_t, double> expected(const std::vector<float>& logits, float t, const std::vector<int32_t>& keep) {
  double total = 0;
  std::map<int32_t, double> p;
  for (int32_t k : keep) total += p[k] = std::exp(logits[static_cast<size_t>(k)] / t);
  for (auto& [k, v] : p) v /= total;
  return p;
}

void expect_frequencies(const std::vector<int32_t>& draws, const std::map<int32_t, double>& want) {
  std::map<int32_t, int> counts;
  for (int32_t t : draws) ++counts[t];
  for (const auto& [token, count] : counts) EXPECT_TRUE(want.count(token)) << "token " << token << " should never be drawn";
  const double n = static_cast<double>(draws.size());
  for (const auto& [token, p] : want) {
    // 5 standard deviations of a binomial: a correct sampler passes, a wrong distribution does not.
    const double sd = std::sqrt(p * (1 - p) / n);
    EXPECT_NEAR(counts[token] / n, p, 5 * sd + 1e-9) << "token " << token;
  }
}

TEST(Sampler, GreedyTakesTheFirstLargestLogit) {
  Sampler s(SamplingParams{}, 0);
  std::vector<float> l{0.f, 2.f, 2.f, 1.f};
  EXPECT_EQ(s.choose(l.data(), 4, {}, 0).token, 1);
}

TEST(Sampler, TheSameSeedGivesTheSameTokensAndADifferentSeedDoesNot) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.has_seed = true;
  p.seed = 42;
  const auto a = draw(p, 1, 200);
  const auto b = draw(p, 999, 200);  // the fallback is ignored when the request has a seed
  EXPECT_EQ(a, b);
  p.seed = 43;
  EXPECT_NE(draw(p, 1, 200), a);
}

TEST(Sampler, TemperatureSamplingFollowsTheSoftmax) {
  SamplingParams p;
  p.temperature = 0.7f;
  expect_frequencies(draw(p, 5, 40000), expected(kLogits, 0.7f, {0, 1, 2, 3, 4, 5}));
}

TEST(Sampler, TopKKeepsTheKMostLikely) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 2;
  expect_frequencies(draw(p, 6, 20000), expected(kLogits, 1.0f, {1, 4}));
}

TEST(Sampler, TopPKeepsTheSmallestSetReachingTheMass) {
  // softmax(kLogits): 3.0 -> .453, 2.5 -> .274, 2.0 -> .166, 1.0 -> .061 ...; .453 + .274 = .727 < .8,
  // + .166 = .894 >= .8: three tokens stay.
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 0.8f;
  expect_frequencies(draw(p, 7, 20000), expected(kLogits, 1.0f, {1, 4, 2}));
}

TEST(Sampler, MinPDropsTokensBelowAFractionOfTheMostLikely) {
  // p(2.0) / p(3.0) = e^-1 = .37 stays above .3; p(1.0) / p(3.0) = e^-2 = .14 does not.
  SamplingParams p;
  p.temperature = 1.0f;
  p.min_p = 0.3f;
  expect_frequencies(draw(p, 8, 20000), expected(kLogits, 1.0f, {1, 4, 2}));
}

TEST(Sampler, PenaltiesFollowTheirDefinitions) {
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  Sampler rep(p, 0);
  std::vector<float> l{4.0f, -1.0f, 3.0f};
  // token 0 seen in the prompt: 4 / 2 = 2 < 3; token 1 seen: -1 x 2.
  EXPECT_EQ(rep.choose(l.data(), 3, {0, 1}, 2).token, 2);
  EXPECT_FLOAT_EQ(l[0], 2.0f);
  EXPECT_FLOAT_EQ(l[1], -2.0f);

  SamplingParams f;
  f.frequency_penalty = 0.5f;
  f.presence_penalty = 0.25f;
  Sampler freq(f, 0);
  std::vector<float> m{1.0f, 1.0f, 1.0f};
  // The prompt (first 2 tokens) does not count; output token 2 twice, 1 once.
  freq.choose(m.data(), 3, {2, 2, 2, 2, 1}, 2);
  EXPECT_FLOAT_EQ(m[0], 1.0f);
  EXPECT_FLOAT_EQ(m[1], 1.0f - 0.5f - 0.25f);
  EXPECT_FLOAT_EQ(m[2], 1.0f - 1.0f - 0.25f);
}

TEST(Sampler, LogprobsAreTheLogSoftmaxOfTheChosenAndTopTokens) {
  SamplingParams p;
  p.logprobs = 2;
  Sampler s(p, 0);
  std::vector<float> l = kLogits;
  const TokenChoice c = s.choose(l.data(), static_cast<int64_t>(l.size()), {}, 0);
  double norm = 0;
  for (float x : kLogits) norm += std::exp(static_cast<double>(x));
  EXPECT_EQ(c.token, 1);
  EXPECT_NEAR(c.logprob, 3.0 - std::log(norm), 1e-5);
  ASSERT_EQ(c.top.size(), 2u);
  EXPECT_EQ(c.top[0].first, 1);
  EXPECT_EQ(c.top[1].first, 4);
  EXPECT_NEAR(c.top[1].second, 2.5 - std::log(norm), 1e-5);
}

constexpr int64_t kLlamaVocab = 128256;

// Logits with a spread of `sd`; `step` > 0 rounds them to its multiples, so many tie.
std::vector<float> random_logits(uint64_t seed, int64_t vocab, float sd, float step) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, sd);
  std::vector<float> l(static_cast<size_t>(vocab));
  for (float& x : l) x = step > 0 ? std::round(normal(rng) / step) * step : normal(rng);
  return l;
}

int32_t choose_once(const SamplingParams& p, const std::vector<float>& logits) {
  Sampler s(p, 0);
  std::vector<float> l = logits;
  return s.choose(l.data(), static_cast<int64_t>(l.size()), {}, 0).token;
}

// For one seed (one uniform draw) the progressive selection must draw what a full sort draws, over
// peaked and flat distributions (flat ones make top-p and min-p grow the prefix to the whole vocab)
// and over rounded logits that tie at every boundary.
TEST(Sampler, TruncationDrawsWhatAFullSortDrawsOverALlamaVocab) {
  struct Knobs {
    float temperature, top_p, min_p;
    int32_t top_k;
  };
  const std::vector<Knobs> knobs{{1.0f, 0.95f, 0.0f, 0},  {0.7f, 0.5f, 0.0f, 0},    {1.0f, 1.0f, 0.05f, 0},
                                 {1.0f, 1.0f, 0.0f, 50},  {0.8f, 0.9f, 0.0f, 50},   {1.0f, 0.99f, 0.01f, 0},
                                 {1.0f, 0.8f, 0.0f, 3000}, {1.3f, 0.999f, 0.0f, 0}};
  const std::vector<std::pair<float, float>> spreads{{1.0f, 0.0f}, {4.0f, 0.0f}, {3.0f, 0.5f}};
  int differing_draws = 0;  // the knobs must matter, or the comparison proves little
  for (const Knobs& k : knobs) {
    SamplingParams p;
    p.temperature = k.temperature;
    p.top_p = k.top_p;
    p.min_p = k.min_p;
    p.top_k = k.top_k;
    p.has_seed = true;
    for (const auto& [sd, step] : spreads) {
      for (uint64_t seed = 0; seed < 6; ++seed) {
        const std::vector<float> logits = random_logits(seed * 31 + 7, kLlamaVocab, sd, step);
        p.seed = seed;
        const int32_t want = reference::sample_sorted(logits, p, reference::first_uniform(seed));
        ASSERT_EQ(choose_once(p, logits), want) << "top_p " << k.top_p << " min_p " << k.min_p << " top_k " << k.top_k
                                                << " sd " << sd << " step " << step << " seed " << seed;
        if (want != static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin())) ++differing_draws;
      }
    }
  }
  EXPECT_GT(differing_draws, 20);
}

TEST(Sampler, ATinyTopPKeepsOnlyTheFirstMostLikelyToken) {
  std::vector<float> l = random_logits(3, 1000, 2.0f, 0.0f);
  const float best = *std::max_element(l.begin(), l.end());
  l[700] = l[400] = best + 1.0f;  // a tie at the top: the lower index is the one kept
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_p = 1e-6f;
  for (int32_t token : draw(p, 11, 200, l)) EXPECT_EQ(token, 400);
}

TEST(Sampler, TiesAtTheTruncationBoundaryKeepTheLowerIndices) {
  // Tokens 1, 3 and 4 tie for second place: top_k 2 keeps 0 and 1, top_k 3 also 3.
  const std::vector<float> l{2.0f, 1.0f, 0.0f, 1.0f, 1.0f, -1.0f};
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 2;
  expect_frequencies(draw(p, 12, 20000, l), expected(l, 1.0f, {0, 1}));
  p.top_k = 3;
  expect_frequencies(draw(p, 13, 20000, l), expected(l, 1.0f, {0, 1, 3}));
  // top_p: .437 (token 0) + .161 (token 1) < .7 <= + .161 (token 3): token 4 ties with 3 but is left out.
  p.top_k = 0;
  p.top_p = 0.7f;
  expect_frequencies(draw(p, 14, 20000, l), expected(l, 1.0f, {0, 1, 3}));
}

TEST(Sampler, ATopKBeyondTheVocabKeepsEverything) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 1000;
  expect_frequencies(draw(p, 15, 40000), expected(kLogits, 1.0f, {0, 1, 2, 3, 4, 5}));
  p.has_seed = true;
  for (uint64_t seed = 0; seed < 50; ++seed) {
    p.seed = seed;
    EXPECT_EQ(choose_once(p, kLogits), reference::sample_sorted(kLogits, p, reference::first_uniform(seed)));
  }
}

TEST(Sampler, MaskedTokensAreNeverDrawn) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> l{-inf, 0.5f, -inf, 0.2f, -inf, 0.0f, -inf};
  SamplingParams plain, top_k, top_p, min_p;
  plain.temperature = top_k.temperature = top_p.temperature = min_p.temperature = 1.0f;
  top_k.top_k = 5;  // more than the unmasked tokens
  top_p.top_p = 0.99f;
  min_p.min_p = 0.01f;
  for (const SamplingParams& p : {plain, top_k, top_p, min_p}) {
    expect_frequencies(draw(p, 16, 20000, l), expected(l, 1.0f, {1, 3, 5}));
  }
}

TEST(Sampler, AVocabOfOneAlwaysGivesThatToken) {
  SamplingParams greedy, plain, truncated;
  plain.temperature = truncated.temperature = 0.9f;
  truncated.top_k = 5;
  truncated.top_p = 0.5f;
  truncated.min_p = 0.5f;
  for (SamplingParams p : {greedy, plain, truncated}) {
    p.logprobs = 3;
    Sampler s(p, 17);
    for (int i = 0; i < 5; ++i) {
      float l = -2.0f;
      const TokenChoice c = s.choose(&l, 1, {}, 0);
      EXPECT_EQ(c.token, 0);
      EXPECT_FLOAT_EQ(c.logprob, 0.0f);
      ASSERT_EQ(c.top.size(), 1u);
      EXPECT_EQ(c.top[0].first, 0);
    }
  }
}

TEST(Sampler, TopLogprobsOverALlamaVocabAreTheMostLikelyWithTiesByIndex) {
  const std::vector<float> logits = random_logits(19, kLlamaVocab, 3.0f, 0.25f);
  double sum = 0.0;
  const float best = *std::max_element(logits.begin(), logits.end());
  for (float x : logits) sum += std::exp(static_cast<double>(x) - best);
  const double log_norm = best + std::log(sum);
  for (float temperature : {0.0f, 1.0f, 0.6f}) {
    SamplingParams p;
    p.temperature = temperature;
    p.top_p = 0.9f;
    p.logprobs = 20;
    Sampler s(p, 20);
    std::vector<float> l = logits;
    const TokenChoice c = s.choose(l.data(), kLlamaVocab, {}, 0);
    const std::vector<int32_t> want = reference::top_sorted(logits, 20);
    ASSERT_EQ(c.top.size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
      EXPECT_EQ(c.top[i].first, want[i]) << "rank " << i;
      EXPECT_NEAR(c.top[i].second, logits[static_cast<size_t>(want[i])] - log_norm, 1e-5);
    }
    EXPECT_NEAR(c.logprob, logits[static_cast<size_t>(c.token)] - log_norm, 1e-5);
  }
}

TEST(Sampler, RejectsParametersOutsideTheirRange) {
  SamplingParams p;
  p.top_p = 0.0f;
  EXPECT_THROW(Sampler(p, 0), Error);
  p = SamplingParams{};
  p.temperature = -1.0f;
  EXPECT_THROW(Sampler(p, 0), Error);
  p = SamplingParams{};
  p.repetition_penalty = 0.0f;
  EXPECT_THROW(Sampler(p, 0), Error);
}

}  // namespace
}  // namespace kiln::test
