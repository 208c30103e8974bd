#pragma once

#include <functional>
#include <set>
#include <string>
#include <vector>

#include "compiler/autotune.h"
#include "engine/tensor_blob.h"

namespace kiln::cuda {

// GEMM tactics for the CUDA target, chosen at build time on the device that will run the engine:
// for every distinct (n, k) among `gemm_weights` and every batch bucket (rows m), cuBLASLt's
// heuristic is asked for up to kCandidates algorithms, each is timed with CUDA events on the real
// weight values (L2 flushed before every run, so weights stream from HBM as they do in decode), and
// the fastest is stored in the table with its time, its config and its raw bytes; for m <= 8 Kiln's
// own GEMV kernel races too and is recorded as the tactic where it wins. A gate_up shape races there
// as the step runs it: kiln-gemv writing the SiLU·mul itself against cuBLASLt plus the silu_mul
// kernel (the entry records that kernel's time as silu_us). `logits_weight`
// (lm_head) is only tuned for buckets up to `max_batch`: it runs on one row per sequence.
// Weights keep the row layout (cuBLASLt reads the HF [n, k] layout transposed).
AutotuneResult autotune_gemms(const std::vector<TensorBlob>& tensors, const std::vector<std::string>& gemm_weights,
                              const std::string& logits_weight, const std::vector<int64_t>& buckets, int64_t max_batch,
                              const std::function<void(size_t, size_t)>& on_step = {});

// The row counts the CUDA target tunes for: the decode batch buckets plus prefill sizes.
std::vector<int64_t> gemm_buckets(int64_t max_batch, int64_t max_seq_len);

}  // namespace kiln::cuda
