#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "backend/cuda/kernels.h"

namespace kiln::cuda {

// Kiln's own GEMM tactic for decode-sized problems, raced against cuBLASLt by the autotuner:
// y[m, n] (fp32) = scale · x[m, k] · w[n, k]ᵀ + beta · y for m ≤ kGemvMaxRows. Each warp streams
// two weight rows once with 16-byte loads (cache-streaming: the weight is read once per step) and
// applies them to all m input rows, so the weight bytes are read once whatever m is. Before waiting
// for the previous kernel (launch.cuh) each warp already pulls its first weight chunks into L2.
// bf16: weights and inputs bf16 (scale 1). fp8: weights and inputs E4M3, `scale` = weight scale ·
// input scale (per-tensor), products summed in fp32.
constexpr int64_t kGemvMaxRows = 8;
bool gemv_supports(int64_t m, int64_t k);
void gemv_bf16(const bf16* w, const bf16* x, int64_t m, int64_t n, int64_t k, float* y, float beta, cudaStream_t stream);
bool gemv_fp8_supports(int64_t m, int64_t k);
void gemv_fp8(const fp8* w, const fp8* x, int64_t m, int64_t n, int64_t k, float scale, float* y, float beta,
              cudaStream_t stream);

}  // namespace kiln::cuda
