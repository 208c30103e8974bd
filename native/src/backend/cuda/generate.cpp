#include "backend/cuda/generate.h"

#include <algorithm>
#include <chrono>

#include <cuda_profiler_api.h>

#include "core/error.h"

namespace kiln::cuda {

namespace {

constexpr int64_t kPageSize = 16;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

}  // namespace

GreedyResult generate_greedy(CudaModel& model, const std::vector<int32_t>& prompt, int64_t steps,
                             const std::function<void(const float*, int64_t)>& on_logits, DType kv_dtype) {
  if (prompt.empty()) throw Error("generate: the prompt has no tokens");
  if (steps < 1) throw Error("generate: steps must be at least 1");
  const int64_t total = static_cast<int64_t>(prompt.size()) + steps - 1;
  if (total > model.max_seq_len()) {
    throw Error("generate: prompt (" + std::to_string(prompt.size()) + ") + steps (" + std::to_string(steps) +
                ") exceeds the engine's max_seq_len (" + std::to_string(model.max_seq_len()) + ")");
  }
  using clock = std::chrono::steady_clock;
  const int64_t vocab = model.config().vocab_size;
  const int64_t pages = (total + kPageSize - 1) / kPageSize;
  CudaKvCache cache = model.new_cache(pages, kPageSize, kv_dtype);
  std::vector<int32_t> table(static_cast<size_t>(pages));
  for (int64_t p = 0; p < pages; ++p) table[static_cast<size_t>(p)] = static_cast<int32_t>(p);
  std::vector<float> logits(on_logits ? static_cast<size_t>(vocab) : 0);
  float* logits_out = on_logits ? logits.data() : nullptr;
  GreedyResult r;
  int32_t next = 0;

  const auto t0 = clock::now();
  ForwardBatch first;
  first.add(prompt.data(), static_cast<int64_t>(prompt.size()), 0, table.data(), true);
  model.forward(first, cache, &next, logits_out);
  r.prefill_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
  if (on_logits) on_logits(logits.data(), vocab);
  r.tokens.push_back(next);

  const auto t1 = clock::now();
  for (int64_t s = 1; s < steps; ++s) {
    const int32_t token = r.tokens.back();
    ForwardBatch step;
    step.add(&token, 1, static_cast<int64_t>(prompt.size()) + s - 1, table.data(), true);
    model.forward(step, cache, &next, logits_out);
    if (on_logits) on_logits(logits.data(), vocab);
    r.tokens.push_back(next);
  }
  const double decode_s = std::chrono::duration<double>(clock::now() - t1).count();
  r.decode_tok_per_s = steps > 1 && decode_s > 0 ? static_cast<double>(steps - 1) / decode_s : 0.0;
  return r;
}

BenchResult bench(CudaModel& model, int64_t prompt_len, int64_t steps, int64_t batch, DType kv_dtype,
                  bool kernel_costs) {
  constexpr int64_t kWarmupSteps = 2;
  // Few: every decode row of a device call pays for them (5 rounds of 32 in the first measurement
  // agreed with the host-synced step to 5 us).
  constexpr int kReplays = 16, kReplayRounds = 3;
  if (prompt_len < 1 || steps < 1 || batch < 1) throw Error("bench: prompt length, steps and batch must be positive");
  if (kernel_costs && !model.decode_graphs()) throw Error("bench: kernel costs need decode graphs (KILN_CUDA_GRAPHS)");
  model.require_batch(batch, "bench: batch");
  const int64_t total = prompt_len + steps + kWarmupSteps;
  if (total > model.max_seq_len()) {
    throw Error("bench: prompt (" + std::to_string(prompt_len) + ") + steps (" + std::to_string(steps + kWarmupSteps) +
                ") exceeds the engine's max_seq_len (" + std::to_string(model.max_seq_len()) + ")");
  }
  using clock = std::chrono::steady_clock;
  const int64_t vocab = model.config().vocab_size;
  const int64_t pages_per_sequence = (total + kPageSize - 1) / kPageSize;
  CudaKvCache cache = model.new_cache(pages_per_sequence * batch, kPageSize, kv_dtype);
  std::vector<std::vector<int32_t>> tables(static_cast<size_t>(batch));
  std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t p = 0; p < pages_per_sequence; ++p) {
      tables[static_cast<size_t>(b)].push_back(static_cast<int32_t>(b * pages_per_sequence + p));
    }
    for (int64_t i = 0; i < prompt_len; ++i) {
      prompts[static_cast<size_t>(b)].push_back(static_cast<int32_t>((i * 7919 + 13 + b * 31) % vocab));
    }
  }
  std::vector<int32_t> next(static_cast<size_t>(batch));
  // Warm-up prefill (first-call allocations and module loading stay out of the numbers).
  {
    ForwardBatch warm;
    warm.add(prompts[0].data(), prompt_len, 0, tables[0].data(), true);
    model.forward(warm, cache, next.data());
  }
  std::vector<double> prefill_ms;
  for (int64_t b = 0; b < batch; ++b) {
    ForwardBatch one;
    one.add(prompts[static_cast<size_t>(b)].data(), prompt_len, 0, tables[static_cast<size_t>(b)].data(), true);
    const auto t0 = clock::now();
    model.forward(one, cache, &next[static_cast<size_t>(b)]);
    prefill_ms.push_back(std::chrono::duration<double, std::milli>(clock::now() - t0).count());
  }
  std::vector<double> step_ms;
  std::vector<int32_t> tokens;
  for (int64_t s = 0; s < steps + kWarmupSteps; ++s) {
    ForwardBatch step;
    tokens = next;
    for (int64_t b = 0; b < batch; ++b) {
      step.add(&tokens[static_cast<size_t>(b)], 1, prompt_len + s, tables[static_cast<size_t>(b)].data(), true);
    }
    // A profiler started with --profile-from-start off sees the measured decode steps only (not the
    // batch's prefills, whose launch count grows with the batch); a no-op without one.
    if (s == kWarmupSteps) cudaProfilerStart();
    const auto t0 = clock::now();
    model.forward(step, cache, next.data());
    if (s >= kWarmupSteps) step_ms.push_back(std::chrono::duration<double, std::milli>(clock::now() - t0).count());
  }
  cudaProfilerStop();
  BenchResult r;
  r.prefill_ms = median(prefill_ms);
  r.decode_step_ms = median(step_ms);
  r.decode_tok_per_s = r.decode_step_ms > 0 ? 1000.0 * static_cast<double>(batch) / r.decode_step_ms : 0.0;
  if (model.decode_graphs()) {
    // The last step again (its tokens at its positions), its graph replayed back to back: the same
    // step without the host between.
    ForwardBatch last;
    for (int64_t b = 0; b < batch; ++b) {
      last.add(&tokens[static_cast<size_t>(b)], 1, prompt_len + steps + kWarmupSteps - 1,
               tables[static_cast<size_t>(b)].data(), true);
    }
    std::vector<double> replay_ms;
    for (int round = 0; round < kReplayRounds; ++round) replay_ms.push_back(model.replay_decode_ms(last, cache, kReplays));
    r.decode_replay_ms = median(replay_ms);
    // Last: its disabled replays leave garbage in the step's KV slots.
    if (kernel_costs) {
      r.kernel_costs = model.decode_kernel_costs(last, cache, kReplays, &r.kernel_costs_step_ms, &r.timeline_note);
    }
  }
  return r;
}

double bench_prefill(CudaModel& model, int64_t prompt_len, int64_t repeats) {
  if (prompt_len < 1 || prompt_len > model.max_seq_len() || repeats < 1) {
    throw Error("bench prefill: prompt length " + std::to_string(prompt_len) + " must lie in [1, max_seq_len " +
                std::to_string(model.max_seq_len()) + "] and repeats must be positive");
  }
  using clock = std::chrono::steady_clock;
  const int64_t vocab = model.config().vocab_size;
  const int64_t pages = (prompt_len + kPageSize - 1) / kPageSize;
  CudaKvCache cache = model.new_cache(pages, kPageSize);
  std::vector<int32_t> table(static_cast<size_t>(pages));
  for (int64_t p = 0; p < pages; ++p) table[static_cast<size_t>(p)] = static_cast<int32_t>(p);
  std::vector<int32_t> prompt(static_cast<size_t>(prompt_len));
  for (int64_t i = 0; i < prompt_len; ++i) prompt[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7919 + 13) % vocab);
  ForwardBatch batch;
  batch.add(prompt.data(), prompt_len, 0, table.data(), true);
  int32_t next = 0;
  model.forward(batch, cache, &next);
  std::vector<double> ms;
  for (int64_t r = 0; r < repeats; ++r) {
    const auto t0 = clock::now();
    model.forward(batch, cache, &next);
    ms.push_back(std::chrono::duration<double, std::milli>(clock::now() - t0).count());
  }
  return median(ms);
}

}  // namespace kiln::cuda
