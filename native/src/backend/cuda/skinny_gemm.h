#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "backend/cuda/gemv.h"

namespace kiln::cuda {

// Kiln's tensor-core GEMM for decode batches of 9..64 rows, raced against cuBLASLt by the
// autotuner: y[m, n] (fp32) = scale · x[m, k] · w[n, k]ᵀ + beta · y, the
// contract of gemv.h's plain form (bf16 x and w with scale 1, or E4M3 x and w with scale = weight
// scale · input scale; beta 0 or 1). At these m the projections are bound by reading the weights,
// and cuBLASLt's tiles leave SMs idle (e.g. 112 tiles on 132 SMs); here a block owns `tile_n` weight
// rows and a 1/`splits` share of k, streams them through a 4-stage cp.async pipeline and multiplies
// them with all m rows (padded to 16 with zeros) by mma.sync (bf16 m16n8k16, E4M3 m16n8k32), so the
// autotuner can pick the (tile, splits) that gives every SM weights to stream.
//
// With splits > 1 each block writes its fp32 partial sums to `partials` ([splits, m, n]), and the
// last block of a weight tile to arrive (an arrival counter it resets, as decode_attention does)
// adds them in split order and applies scale and beta: the result does not depend on which block
// finishes last, so runs are bit-identical.
//
// Its output is gemv.h's GemvOut: fp32 y (+ beta · y), or the SiLU·mul of (gate, up) row pairs
// into act[m, n / 2] (n even, beta 0, y unwritten), each value exactly what silu_mul_to_bf16 /
// silu_mul_to_fp8 (act_scale) would make of the fp32 y, so the gate_up GEMM of a decode batch needs
// no [m, n] fp32 round trip and no SiLU kernel. A thread's MMA accumulators hold adjacent output
// columns (2t, 2t + 1) of an 8-column tile, so each holds whole pairs; with splits the last block
// applies it after adding the partials.
constexpr int64_t kSkinnyMaxRows = 64;
// Decode batches below this run on kiln-gemv or cuBLASLt; the autotuner races the skinny GEMM only
// in buckets that hold such batches (the m = 64 bucket).
constexpr int64_t kSkinnyMinRows = 9;
// Wider tiles read x from shared memory fewer times per weight byte (at 64 rows and a 64-row tile,
// as many x bytes as weight bytes); narrower ones make more blocks of a small n.
constexpr int kSkinnyTiles[] = {64, 128, 256};
constexpr int kSkinnySplits[] = {1, 2, 3, 4, 6, 8};

// Where split partials go. `partials` may be scratch another GEMM of the same stream also uses
// (gemm.h shares cuBLASLt's workspace); `counters` must start zero and is left zero.
struct SkinnyWorkspace {
  float* partials = nullptr;
  size_t partial_bytes = 0;
  int32_t* counters = nullptr;
  int64_t counter_count = 0;
};

// The partial bytes `splits` need for m rows of n outputs (0 for one split).
size_t skinny_partial_bytes(int64_t m, int64_t n, int splits);
// Whether the kernel runs this problem: 1 ≤ m ≤ kSkinnyMaxRows, whole 16-byte chunks per row of k,
// a tile of kSkinnyTiles, 1..8 splits whose partials and counters fit `workspace`; with `silu`
// (the SiLU·mul output) n even.
bool skinny_supports(int64_t m, int64_t n, int64_t k, bool fp8, int tile_n, int splits,
                     const SkinnyWorkspace& workspace, bool silu = false);
// Throws kiln::Error naming the problem where skinny_supports is false, w / x are not 16-byte
// aligned, `out` has no output, or beta is not 0 with act.
void skinny_gemm(const void* w, const void* x, bool fp8, int64_t m, int64_t n, int64_t k, float scale,
                 const GemvOut& out, int tile_n, int splits, const SkinnyWorkspace& workspace, cudaStream_t stream);

}  // namespace kiln::cuda
