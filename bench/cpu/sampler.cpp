// Host sampler cost per token at the Llama 3 vocab: kiln::Sampler against the full-sort sampler it
// replaced (kept here verbatim in its sampling part), in one run on one machine.
// Then one serving step's host sampling: 64 sampled rows, one Sampler each, spread over a thread
// pool as EngineLoop::run_step does, at 1 and 2 threads.
// Build and run: bench/cpu/sampler.sh [iterations]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "runtime/sampler.h"

namespace {

using kiln::SamplingParams;
using kiln::TokenChoice;

// The sampler before progressive selection: a full sort without top_k, a vocab-sized index vector
// and partial sort for logprobs.
class FullSortSampler {
 public:
  FullSortSampler(SamplingParams p, uint64_t seed) : p_(p), rng_(seed) {}

  TokenChoice choose(const float* logits, int64_t vocab) {
    const SamplingParams& p = p_;
    TokenChoice out;
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
    const double r = static_cast<double>(rng_() >> 11) * 0x1.0p-53 * kept;
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

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;
};

// Median over `rounds` of the mean µs per token of `iters` tokens, cycling through the logit rows.
template <typename Choose>
double us_per_token(std::vector<std::vector<float>>& rows, int iters, Choose&& choose) {
  std::vector<double> rounds;
  int64_t sink = 0;
  for (int r = 0; r < 5; ++r) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) sink += choose(rows[static_cast<size_t>(i) % rows.size()]).token;
    rounds.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count() / iters);
  }
  if (sink == -1) std::puts("");  // keeps the choices from being optimised away
  std::sort(rounds.begin(), rounds.end());
  return rounds[rounds.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int iters = argc > 1 ? std::atoi(argv[1]) : 40;
  constexpr int64_t kVocab = 128256;
  // Rows of N(0, 3) logits: about as peaked as a model's, so top_p 0.95 keeps a few thousand tokens.
  std::mt19937_64 gen(1);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<std::vector<float>> rows(8, std::vector<float>(kVocab));
  for (auto& row : rows) {
    for (float& x : row) x = normal(gen);
  }

  struct Case {
    const char* name;
    SamplingParams p;
  };
  std::vector<Case> cases(5);
  cases[0].name = "greedy";
  cases[1].name = "temperature 0.8";
  cases[1].p.temperature = 0.8f;
  cases[2].name = "top_p 0.95";
  cases[2].p.temperature = 0.8f;
  cases[2].p.top_p = 0.95f;
  cases[3].name = "top_k 50";
  cases[3].p.temperature = 0.8f;
  cases[3].p.top_k = 50;
  cases[4].name = "top_p 0.95, logprobs 5";
  cases[4].p = cases[2].p;
  cases[4].p.logprobs = 5;

  std::printf("vocab %lld, %d tokens x 5 rounds, median round\n", static_cast<long long>(kVocab), iters);
  std::printf("| sampling | kiln::Sampler µs/token | full sort µs/token | speed-up |\n|---|---:|---:|---:|\n");
  for (const Case& c : cases) {
    kiln::Sampler now(c.p, 7);
    FullSortSampler before(c.p, 7);
    // No penalties are set, so choose() leaves the rows as they are for the next case.
    const double a = us_per_token(rows, iters, [&](std::vector<float>& row) { return now.choose(row.data(), kVocab, {}, 0); });
    const double b = us_per_token(rows, iters, [&](std::vector<float>& row) { return before.choose(row.data(), kVocab); });
    std::printf("| %s | %.1f | %.1f | %.1fx |\n", c.name, a, b, b / a);
  }

  constexpr int kRows = 64;
  std::vector<std::vector<float>> step_rows(kRows, std::vector<float>(kVocab));
  for (auto& row : step_rows) {
    for (float& x : row) x = normal(gen);
  }
  SamplingParams temp1;
  temp1.temperature = 1.0f;
  SamplingParams nucleus = temp1;
  nucleus.top_p = 0.95f;
  const int steps = std::max(1, iters / 10);
  std::printf("\nstep of %d sampled rows, %d steps x 5 rounds, median round\n", kRows, steps);
  std::printf("| sampling | threads | ms/step |\n|---|---:|---:|\n");
  for (const auto& [name, p] : {std::pair<const char*, SamplingParams>{"temperature 1", temp1}, {"top_p 0.95", nucleus}}) {
    for (int threads : {1, 2}) {
      kiln::ThreadPool pool(threads);
      std::vector<kiln::Sampler> samplers;
      samplers.reserve(kRows);
      for (int r = 0; r < kRows; ++r) samplers.emplace_back(p, 7 + static_cast<uint64_t>(r));
      std::vector<TokenChoice> choices(kRows);
      std::vector<double> rounds;
      for (int round = 0; round < 5; ++round) {
        const auto start = std::chrono::steady_clock::now();
        for (int s = 0; s < steps; ++s) {
          pool.run(kRows, threads, [&](int r) {
            choices[static_cast<size_t>(r)] = samplers[static_cast<size_t>(r)].choose(step_rows[static_cast<size_t>(r)].data(), kVocab, {}, 0);
          });
        }
        rounds.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / steps);
      }
      std::sort(rounds.begin(), rounds.end());
      std::printf("| %s | %d | %.1f |\n", name, threads, rounds[rounds.size() / 2]);
    }
  }
  return 0;
}
