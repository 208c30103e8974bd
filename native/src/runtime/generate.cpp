#include "runtime/generate.h"

#include <chrono>

#include "core/error.h"

namespace kiln {

namespace {

int32_t argmax(const std::vector<float>& v) {
  size_t best = 0;
  for (size_t i = 1; i < v.size(); ++i) {
    if (v[i] > v[best]) best = i;
  }
  return static_cast<int32_t>(best);
}

}  // namespace

GreedyResult generate_greedy(Model& model, const std::vector<int32_t>& prompt, int64_t steps,
                             const std::function<void(const float*, int64_t)>& on_logits) {
  if (prompt.empty()) throw Error("generate: the prompt has no tokens");
  if (steps < 1) throw Error("generate: steps must be at least 1");
  const int64_t total = static_cast<int64_t>(prompt.size()) + steps - 1;
  if (total > model.max_seq_len()) {
    throw Error("generate: prompt (" + std::to_string(prompt.size()) + ") + steps (" + std::to_string(steps) +
                ") exceeds the engine's max_seq_len (" + std::to_string(model.max_seq_len()) + ")");
  }
  using clock = std::chrono::steady_clock;
  const int64_t vocab = model.config().vocab_size;
  std::vector<float> logits(static_cast<size_t>(vocab));
  auto sequence = model.new_single_sequence();
  GreedyResult r;

  const auto t0 = clock::now();
  model.forward(prompt.data(), static_cast<int64_t>(prompt.size()), 0, sequence, logits.data());
  r.prefill_ms = std::chrono::duration<double, std::milli>(clock::now() - t0).count();
  if (on_logits) on_logits(logits.data(), vocab);
  r.tokens.push_back(argmax(logits));

  const auto t1 = clock::now();
  for (int64_t s = 1; s < steps; ++s) {
    const int32_t token = r.tokens.back();
    model.forward(&token, 1, static_cast<int64_t>(prompt.size()) + s - 1, sequence, logits.data());
    if (on_logits) on_logits(logits.data(), vocab);
    r.tokens.push_back(argmax(logits));
  }
  const double decode_s = std::chrono::duration<double>(clock::now() - t1).count();
  r.decode_tok_per_s = steps > 1 && decode_s > 0 ? static_cast<double>(steps - 1) / decode_s : 0.0;
  return r;
}

}  // namespace kiln
