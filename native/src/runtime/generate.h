#pragma once

#include <functional>
#include <vector>

#include "runtime/model.h"

namespace kiln {

struct GreedyResult {
  std::vector<int32_t> tokens;  // generated ids only
  double prefill_ms = 0.0;
  double decode_tok_per_s = 0.0;  // over the steps after the first token
};

// Prefills `prompt`, then decodes one token per step, always taking the argmax (the first index on
// ties, as torch.argmax). `on_logits` sees the logits that chose each generated token.
GreedyResult generate_greedy(Model& model, const std::vector<int32_t>& prompt, int64_t steps,
                             const std::function<void(const float*, int64_t)>& on_logits = {});

}  // namespace kiln
