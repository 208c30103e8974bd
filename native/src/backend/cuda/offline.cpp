#include "backend/cuda/offline.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <vector>

#include "core/error.h"

namespace kiln::cuda {

namespace {

constexpr int64_t kPageSize = 16;

struct Running {
  int64_t request = 0;
  int64_t slot = 0;
  int64_t prefilled = 0;  // prompt tokens already in the cache
  int64_t generated = 0;
  int32_t last = 0;
};

std::vector<int32_t> prompt_of(int64_t request, int64_t length, int64_t vocab) {
  std::vector<int32_t> p(static_cast<size_t>(length));
  for (int64_t i = 0; i < length; ++i) p[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7919 + request * 104729 + 13) % vocab);
  return p;
}

}  // namespace

OfflineResult offline_throughput(CudaModel& model, const OfflineOptions& o) {
  if (o.requests < 1 || o.prompt_len < 1 || o.output_len < 1 || o.concurrency < 1 || o.token_budget < 1) {
    throw Error("offline: requests, prompt and output lengths, concurrency and token budget must be positive");
  }
  if (o.prompt_len + o.output_len > model.max_seq_len()) {
    throw Error("offline: prompt (" + std::to_string(o.prompt_len) + ") + output (" + std::to_string(o.output_len) +
                ") exceeds the engine's max_seq_len (" + std::to_string(model.max_seq_len()) + ")");
  }
  if (o.token_budget < o.concurrency) {
    throw Error("offline: the token budget (" + std::to_string(o.token_budget) + ") must hold a decode token of every "
                "running sequence (" + std::to_string(o.concurrency) + ")");
  }
  const int64_t vocab = model.config().vocab_size;
  const int64_t concurrency = std::min(o.concurrency, o.requests);
  model.require_batch(concurrency, "offline: concurrency");
  const int64_t pages_per_slot = (o.prompt_len + o.output_len + kPageSize - 1) / kPageSize;
  CudaKvCache cache = model.new_cache(pages_per_slot * concurrency, kPageSize);
  std::vector<std::vector<int32_t>> tables(static_cast<size_t>(concurrency));
  for (int64_t s = 0; s < concurrency; ++s) {
    for (int64_t p = 0; p < pages_per_slot; ++p) tables[static_cast<size_t>(s)].push_back(static_cast<int32_t>(s * pages_per_slot + p));
  }
  std::vector<std::vector<int32_t>> prompts;
  for (int64_t r = 0; r < o.requests; ++r) prompts.push_back(prompt_of(r, o.prompt_len, vocab));

  {  // warm-up: module loading and first-use allocations stay out of the timing
    int32_t next = 0;
    ForwardBatch warm;
    warm.add(prompts[0].data(), std::min(o.prompt_len, o.token_budget), 0, tables[0].data(), true);
    model.forward(warm, cache, &next);
  }

  using clock = std::chrono::steady_clock;
  std::deque<int64_t> free_slots;
  for (int64_t s = 0; s < concurrency; ++s) free_slots.push_back(s);
  std::vector<Running> running;
  int64_t admitted = 0;
  OfflineResult result;
  std::vector<int32_t> next;
  std::vector<size_t> logit_owner;
  const auto t0 = clock::now();
  while (admitted < o.requests || !running.empty()) {
    while (admitted < o.requests && !free_slots.empty()) {
      running.push_back(Running{admitted++, free_slots.front()});
      free_slots.pop_front();
    }
    ForwardBatch batch;
    logit_owner.clear();
    int64_t budget = o.token_budget;
    for (size_t i = 0; i < running.size(); ++i) {
      Running& r = running[i];
      if (r.prefilled < o.prompt_len) continue;
      batch.add(&r.last, 1, o.prompt_len + r.generated - 1, tables[static_cast<size_t>(r.slot)].data(), true);
      logit_owner.push_back(i);
      --budget;
    }
    for (size_t i = 0; i < running.size() && budget > 0; ++i) {
      Running& r = running[i];
      if (r.prefilled >= o.prompt_len) continue;
      const int64_t chunk = std::min(o.prompt_len - r.prefilled, budget);
      const bool last_chunk = r.prefilled + chunk == o.prompt_len;
      batch.add(prompts[static_cast<size_t>(r.request)].data() + r.prefilled, chunk, r.prefilled,
                tables[static_cast<size_t>(r.slot)].data(), last_chunk);
      if (last_chunk) logit_owner.push_back(i);
      r.prefilled += chunk;
      budget -= chunk;
    }
    next.resize(logit_owner.size());
    model.forward(batch, cache, next.data());
    ++result.steps;
    for (size_t j = 0; j < logit_owner.size(); ++j) {
      Running& r = running[logit_owner[j]];
      r.last = next[j];
      ++r.generated;
      ++result.output_tokens;
    }
    std::vector<Running> still;
    for (Running& r : running) {
      if (r.generated >= o.output_len) {
        free_slots.push_back(r.slot);
      } else {
        still.push_back(r);
      }
    }
    running.swap(still);
  }
  result.seconds = std::chrono::duration<double>(clock::now() - t0).count();
  result.output_tok_per_s = static_cast<double>(result.output_tokens) / result.seconds;
  result.total_tok_per_s = static_cast<double>(o.requests * (o.prompt_len + o.output_len)) / result.seconds;
  return result;
}

}  // namespace kiln::cuda
