#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/json.h"
#include "core/thread_pool.h"
#include "engine/tensor_blob.h"

namespace kiln {

struct AutotuneResult {
  Json table;                                    // the engine header's "autotune" object
  std::map<std::string, WeightLayout> layouts;  // chosen layout per GEMM weight
};

// Times every registered GEMM tactic on this machine for each distinct (n, k, dtype) among
// `gemm_weights` and each batch bucket (activation rows), using the real weights and random inputs.
// The layout is chosen by the winner at the smallest bucket (decode dominates serving time); each
// bucket then gets the fastest tactic reading that layout. Weights in `row_only` (a tied lm_head is
// also the embedding table) keep the row layout. `on_step(done, total)` may throw to cancel.
AutotuneResult autotune_gemms(const std::vector<TensorBlob>& tensors, const std::vector<std::string>& gemm_weights,
                              const std::set<std::string>& row_only, const std::vector<int64_t>& buckets,
                              ThreadPool& pool, const std::function<void(size_t, size_t)>& on_step = {});

// The table recorded when autotuning is switched off: every GEMM uses the default tactic.
AutotuneResult untuned_gemms(const std::vector<int64_t>& buckets);

}  // namespace kiln
