#pragma once

#include <functional>
#include <vector>

#include "backend/cuda/model.h"
#include "runtime/generate.h"

namespace kiln::cuda {

// Greedy generation on the GPU with the same contract as kiln::generate_greedy (argmax on the
// device, first index on ties); `on_logits`, when given, sees every step's logits (copied to host
// only then). kv_dtype: the KV cache's, BF16 or F8E4M3.
GreedyResult generate_greedy(CudaModel& model, const std::vector<int32_t>& prompt, int64_t steps,
                             const std::function<void(const float*, int64_t)>& on_logits = {},
                             DType kv_dtype = DType::BF16);

struct BenchResult {
  double prefill_ms = 0.0;         // one prompt alone, median over the batch's sequences
  double decode_step_ms = 0.0;     // median step of `batch` sequences decoding together
  double decode_tok_per_s = 0.0;   // batch / decode_step_ms
  // The same step's decode graph replayed back to back (CudaModel::replay_decode_ms), median of 3
  // rounds of 16: decode_step_ms minus this is the host round trip a step pays. 0 without graphs.
  double decode_replay_ms = 0.0;
  // With kernel_costs: the step's graph captured afresh (kernel_costs_step_ms back to back) and what
  // each family of its kernels costs it (CudaModel::decode_kernel_costs), costliest first.
  double kernel_costs_step_ms = 0.0;
  std::vector<CudaModel::KernelCost> kernel_costs;
  std::string timeline_note;  // with a timeline build (timeline.h)
};

// `batch` sequences of `prompt_len` tokens: each prefilled alone (timed), then `steps` decode steps
// of all of them in one batched forward per step (timed after two warm-up steps), on a kv_dtype cache.
// kernel_costs: also measure where the last step's time goes (needs decode graphs).
BenchResult bench(CudaModel& model, int64_t prompt_len, int64_t steps, int64_t batch, DType kv_dtype = DType::BF16,
                  bool kernel_costs = false);

// Time to first token of one `prompt_len` prompt into a fresh cache: median of `repeats` forwards
// (after one warm-up), each ending with the greedy token on the host.
double bench_prefill(CudaModel& model, int64_t prompt_len, int64_t repeats);

}  // namespace kiln::cuda
