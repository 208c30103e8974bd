#pragma once

#include <cstdint>

#include "backend/cuda/model.h"

namespace kiln::cuda {

struct OfflineOptions {
  int64_t requests = 512;
  int64_t prompt_len = 128;
  int64_t output_len = 128;
  int64_t concurrency = 256;    // sequences in flight (each owns its KV pages for its whole life)
  int64_t token_budget = 8192;  // tokens per forward step: every running decode first, then prefill chunks
};

struct OfflineResult {
  int64_t steps = 0;
  int64_t output_tokens = 0;
  double seconds = 0.0;
  double output_tok_per_s = 0.0;
  double total_tok_per_s = 0.0;  // prompt + output tokens per second
};

// Offline throughput: `requests` identical-length requests through a continuous-batching loop on the
// model (the serving loop's policy without its bookkeeping): up to `concurrency` run at once; each
// step decodes every running sequence that has its prompt in and fills the rest of the token budget
// with prompt chunks (a long prompt spans steps); a finished request frees its slot for the next
// waiting one. Greedy tokens, no early stop. Timed from the first step to the last token, after one
// warm-up request.
OfflineResult offline_throughput(CudaModel& model, const OfflineOptions& options);

}  // namespace kiln::cuda
