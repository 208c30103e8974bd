#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/kernels.h"

namespace kiln::cuda {

// Kiln's own GEMM tactic for decode-sized problems, raced against cuBLASLt by the autotuner:
// y[m, n] (fp32) = x[m, k] (bf16) · w[n, k]ᵀ (bf16) + beta · y for m ≤ kGemvMaxRows. Each warp
// streams two weight rows once with 16-byte loads (cache-streaming: the weight is read once per step)
// and applies them to all m input rows, so the weight bytes are read once whatever m is.
constexpr int64_t kGemvMaxRows = 8;
bool gemv_supports(int64_t m, int64_t k);
void gemv_bf16(const bf16* w, const bf16* x, int64_t m, int64_t n, int64_t k, float* y, float beta, cudaStream_t stream);

}  // namespace kiln::cuda
