#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "backend/cuda/kernels.h"

namespace kiln::cuda {

// Kiln's own GEMM tactic for decode-sized problems, raced against cuBLASLt by the autotuner:
// y[m, n] (fp32) = scale · x[m, k] · w[n, k]ᵀ + beta · y for m ≤ kGemvMaxRows. Each warp streams
// two weight rows (a slice of k: `split` warps share a row pair, so small n still fills the GPU) with
// 16-byte cache-streaming loads and applies them to all m input rows, so the weight bytes are read
// once whatever m is. Before waiting for the previous kernel (launch.cuh) each lane already loads
// its first weight chunks into registers. bf16: weights and inputs bf16 (scale 1). fp8: weights
// and inputs E4M3, `scale` = weight scale · input scale (per-tensor), products summed in fp32; the
// E4M3 form runs on tensor cores, where `split` warps share a tile of 16 rows (gemv_fp8.cu).
//
// Two fusions remove the small kernels around a decode GEMM:
// - normed input (GemvIn::h set, m ≤ kGemvNormMaxRows): each block RMS-normalises the fp32
//   residual rows itself (times gamma when given; quantized to E4M3 with 1 / GemvIn::scale for fp8)
//   into shared memory, exactly as rms_norm_to_bf16 / rms_norm_to_fp8 would have written x.
// - SiLU·mul output (GemvOut::act set): the weight rows come in (gate, up) pairs (the CUDA model
//   interleaves gate_up at load) and act[i, j] = silu(gate_j) · up_j is stored in the input dtype
//   (fp8: divided by GemvOut::act_scale), as silu_mul_to_bf16 / _fp8 would from fp32 outputs.
constexpr int64_t kGemvMaxRows = 8;
constexpr int64_t kGemvNormMaxRows = 4;
constexpr int64_t kGemvNormSharedBytes = 40 * 1024;

struct GemvIn {
  const void* x = nullptr;  // [m, k], bf16 or E4M3 as the weights
  const float* h = nullptr;  // or: fp32 rows [m, k] to RMS-normalise
  const float* gamma = nullptr;
  float eps = 0.0f;
  float scale = 1.0f;  // fp8: the input scale the normed rows are quantized with
};

struct GemvOut {
  float* y = nullptr;  // [m, n] fp32
  float beta = 0.0f;
  // With beta != 0: y's old values may be read before the PDL wait (launch.cuh), because the kernel
  // just before this one did not write y. The residual adds of a decoder layer (o after the
  // attention, down after gate_up) then have the residual in registers when their sums are ready,
  // instead of one more L2 round trip at the end of the kernel.
  bool y_settled = false;
  void* act = nullptr;  // or: [m, n / 2] SiLU·mul of (gate, up) row pairs
  float act_scale = 1.0f;
};

// Split factors (bf16: warps per row pair; E4M3: warps per 16-row tile), and the weight rows one
// block of 8 warps covers with a bf16 split (the only GEMV the RMSNorm is fused into).
constexpr int kGemvSplits[] = {1, 2, 4, 8};
constexpr int64_t gemv_rows_per_block(int split) { return 16 / split; }
// The splits the autotuner races. E4M3 adds 16: a block of 16 warps on one tile, twice the loads in
// flight per row of split 8, for projections with few tiles (8B down: 256 tiles of k = 14336).
std::vector<int> gemv_splits(bool fp8);
// E4M3, 1-8 input rows, no normed input, k a multiple of 512 with the m staged rows in 48 KB of shared
// memory (m·k + (8 - m)·16 bytes: one row of every 8B and 70B projection, 8 rows of k = 4096): the
// "split" that runs Hopper's E4M3 wgmma instead (a warpgroup per 64 weight rows and the whole of k,
// gemv_fp8_wgmma.cu). Not raced by the autotuner; KILN_CUDA_TACTIC=...=kiln-gemv/64 picks it.
constexpr int kGemvWgmmaSplit = 64;
bool gemv_wgmma_supports(int64_t m, int64_t k, bool normed_input = false);

bool gemv_supports(int64_t m, int64_t k, bool fp8, bool normed_input = false);
// stage_input (E4M3): each block first widens the input rows to f16 in shared memory where they fit
// (64 KB), or, when false, every warp widens its chunks of them as it goes. Staging takes the
// conversions out of the loop but holds every warp at a block-wide pass before it: the autotuner
// races both per shape (the CUDA-core loop this kernel replaced lost by staging on the long-k
// projections: H200, 8B down 17.56 against 16.75 us).
// isolated: the autotuner's race, where nothing runs before the kernel. The one-row E4M3 split-8
// kernel then loads 4 steps before the PDL wait, not 8 (gemv_fp8.cu): the deeper prefetch gains by
// overlapping the kernel before it in a decode step, and alone it only costs occupancy (8B fp8 o at
// m = 1: 11.2 us deep against 10.4, so the race handed o to cuBLASLt).
void gemv(const void* w, bool fp8, int64_t m, int64_t n, int64_t k, float scale, const GemvIn& in, const GemvOut& out,
          int split, cudaStream_t stream, bool stage_input = true, bool isolated = false);

// The plain forms (x in, fp32 y out).
void gemv_bf16(const bf16* w, const bf16* x, int64_t m, int64_t n, int64_t k, float* y, float beta, cudaStream_t stream,
               int split = 1);
void gemv_fp8(const fp8* w, const fp8* x, int64_t m, int64_t n, int64_t k, float scale, float* y, float beta,
              cudaStream_t stream, int split = 1);

}  // namespace kiln::cuda
