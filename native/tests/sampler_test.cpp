// Token choice: greedy, the truncations, penalties, seeded reproducibility and sampled
// frequencies against the probabilities the parameters imply.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "core/error.h"
#include "runtime/sampler.h"

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
