#include "backend/cuda/cp_async.cuh"
#include "backend/cuda/gemv_kernel.cuh"

// The E4M3 GEMV on tensor cores. On CUDA cores (the loop of gemv_kernel.cuh, which bf16 keeps) most
// of an E4M3 GEMV's instructions were arithmetic around each weight: F2FP + HADD2 to widen an E4M3
// pair to fp32, then one dependent FFMA per element. Here an MMA does the multiply-adds: the weights are widened to f16
// (exact for E4M3: one F2FP per pair) and m16n8k16 multiplies 16 weight rows (A) with up to 8 input
// rows (B), products exact and summed in fp32. Batch 1 leaves 7 of B's 8 columns zero, which costs
// nothing a GEMV misses: the tensor cores idle while the weights stream. (Hopper has no E4M3
// mma.sync: ptxas lowers one to these same conversions plus f16 MMAs, and converts B every time.)
//
// The weights go from global memory straight into A fragments, without shared memory or ldmatrix:
// a dot product does not care in which order it visits k, so lane (g, q) of a warp (g = lane / 4,
// q = lane % 4) loads the 16 bytes at chunk q of a 64-byte step of rows g and g + 8, and each of
// the step's four MMAs is told that 4 of those elements are its k = 2q, 2q+1, 2q+8, 2q+9. B is read
// in the same permuted order: lane (g, q) holds input row g's elements of the same chunk. A warp
// step is 64 bytes of 16 rows, four lanes per row, as full 32-byte sectors.

namespace kiln::cuda::gemv_detail {

namespace {

constexpr int kTileRows = 16;
constexpr int kStepChunks = 4;  // 16-byte chunks of each row per warp step: one per lane of a row
constexpr int kMmaPrefetchSteps = 4;
// One input row at split 8 loads 8 steps before the wait: all of a k = 4096 row slice (o, QKV and
// gate_up of the 8B shape), so the whole read can overlap the kernel before it where the blocks are
// resident (112 registers against 76, nvcc 13.0). H200, 8B fp8: batch 1 2.675 -> 2.586 ms; at 8
// input rows the same depth lost (2.961 -> 3.089), so they keep 4. KILN_CUDA_GEMV_DEEP_PREFETCH=0
// switches it off; the autotuner's race never takes it (gemv(..., isolated) in gemv.h,
// Args::deep_prefetch).
// The deep kernel always stages its input row where it fits: unstaged, each of the 8 prefetched
// steps loads its input chunk only after the previous step's MMAs (the SASS: one LDG per step,
// behind a branch), a chain of 8 L2 round trips after the PDL wait. The race, timing the 4-step
// kernel in isolation, cannot see that: two 8B fp8 builds whose tactics differed only in QKV's
// staging (12.7 against 12.6 us in the race) decoded batch 1 in 2.554 ms (staged) and 2.632
// (unstaged), H200, two calls on two machines. Side by side on one engine (3 interleaved rounds):
// batch 1 2.660 -> 2.582 ms, batch 8 even. KILN_CUDA_GEMV_DEEP_STAGE=0 leaves the choice to the race.
constexpr int kMmaDeepPrefetchSteps = 8;
// The shortest k whose split-8 slices have all 8 steps: below it (the 1B shape's k = 2048 has 4)
// the extra registers would only cost occupancy.
constexpr int64_t kDeepPrefetchMinK = int64_t{16} * kStepChunks * 8 * kMmaDeepPrefetchSteps;
// The most shared memory a block stages its input in (normed E4M3 rows plus their f16 widening):
// one row of k = 14336 (Llama-3-8B's down projection) as f16 is 28 KB.
constexpr int64_t kGemvMmaSharedBytes = 64 * 1024;
// kRing (the deep kernel, where a warp's slice is longer than its P prefetched steps: Llama-3-8B's
// down projection, k = 14336, 28 steps a warp): the weights stream through a ring of P steps per
// warp in shared memory, filled by cp.async, each slot refilled P steps ahead as soon as it is read.
// The register form loads the first P steps before the wait and then the rest four steps at a time,
// so each warp waits out five more round trips with nothing in flight while it multiplies; the ring
// keeps P steps in flight to the end, and needs no registers for them. Each lane copies the chunks
// it later reads itself: no barrier. 56 registers (nvcc 13.0) against the register form's 112.
// H200, 8B fp8, one engine, 3 interleaved rounds: batch 1 2.583 -> 2.569 ms, batch 8 even
// (2.846 / 2.849).
// KILN_CUDA_GEMV_RING=0 turns it off.
// The ring for the slices the prefetch covers whole (o, QKV, gate_up at 8B: 52-64 registers, three
// blocks an SM where the register form fits two) lost: batch 1 2.575 -> 2.678 ms, batch 8 even
// (H200, 8B fp8, one engine, 3 interleaved rounds), so only slices longer than P steps take it.
constexpr int64_t kRingStepBytes = 32 * 2 * 16;  // a warp step: 32 lanes, rows g and g + 8, 16 bytes each
constexpr int64_t ring_bytes(int steps) { return int64_t{kWarps} * steps * kRingStepBytes; }

// Eight f16 pairs from one 16-byte chunk of E4M3 (exact: every E4M3 value is an f16 value).
struct Half16 {
  uint32_t h[8];
};

__device__ __forceinline__ Half16 widen(const uint4& v) {
  Half16 out;
  const uint32_t words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    // The word's two 16-bit halves as registers of their own (no shifts), low half first.
    asm("{\n.reg .b16 lo, hi;\nmov.b32 {lo, hi}, %2;\ncvt.rn.f16x2.e4m3x2 %0, lo;\ncvt.rn.f16x2.e4m3x2 %1, hi;\n}\n"
        : "=r"(out.h[2 * i]), "=r"(out.h[2 * i + 1])
        : "r"(words[i]));
  }
  return out;
}

// c += a · b on a 16 x 8 tile, k16, f16 operands, fp32 accumulation.
__device__ __forceinline__ void mma_f16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                        uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// One 64-byte step: MMA j takes elements 4j..4j+3 of the lane's chunk. Two accumulators halve the
// chain of dependent MMAs; acc[t][0..1] = rows g (inputs 2q, 2q+1), acc[t][2..3] = rows g + 8.
__device__ __forceinline__ void apply_step(float (&acc)[2][4], const uint4& lo, const uint4& hi, const Half16& x) {
  const Half16 a = widen(lo);
  const Half16 b = widen(hi);
#pragma unroll
  for (int j = 0; j < 4; ++j) mma_f16(acc[j % 2], a.h[2 * j], b.h[2 * j], a.h[2 * j + 1], b.h[2 * j + 1], x.h[2 * j], x.h[2 * j + 1]);
}

// The input rows as f16 in shared memory, [M][k / 16][8 pairs]: widened once per block instead of
// once per warp and step, where they fit (kGemvMmaSharedBytes) and Args::stage_input asks for it.
// Each thread issues its loads (up to kStageBatch) before it widens any: this runs after the PDL
// wait, on the step's critical path, where a load-then-store loop would wait out one L2 round trip
// per chunk (a k = 14336 row is 3.5 chunks a thread).
constexpr int kStageBatch = 4;

template <int M>
__device__ void stage_input_rows(const uint4* x, int64_t chunks, Half16* x_h) {
  const int64_t total = M * chunks;
  for (int64_t base = threadIdx.x; base < total; base += kStageBatch * blockDim.x) {
    uint4 v[kStageBatch];
#pragma unroll
    for (int u = 0; u < kStageBatch; ++u) {
      const int64_t i = base + static_cast<int64_t>(u) * blockDim.x;
      v[u] = i < total ? x[i] : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kStageBatch; ++u) {
      const int64_t i = base + static_cast<int64_t>(u) * blockDim.x;
      if (i < total) x_h[i] = widen(v[u]);
    }
  }
  __syncthreads();
}

// Warps per block: 8, or S where a tile takes more (split 16).
template <int S>
constexpr int kBlockWarpsOf = S > kWarps ? S : kWarps;

// S warps share a tile of 16 weight rows (each a slice of its steps); kBlockWarpsOf<S> / S tiles
// per block. kWide: the input rows are staged as f16 (else widened from E4M3 at every step). P: the
// steps loaded before the wait on the previous kernel. kRing: the weights through the shared-memory
// ring above, after the staged input (kWide) in the dynamic shared memory.
template <int M, int S, bool kNorm, bool kSilu, bool kWide, int P, bool kRing>
__global__ __launch_bounds__(kBlockWarpsOf<S> * 32) void gemv_mma_kernel(Args a) {
  static_assert(!kRing || (kWide && S == kWarps), "the ring sits after the staged input, one tile a block");
  constexpr int kBlockWarps = kBlockWarpsOf<S>;
  constexpr int kTiles = kBlockWarps / S;
  extern __shared__ uint4 x_s[];  // normed input [M][k / 16] E4M3, then (kWide) the f16 rows
  // The warps' partial sums; with the ring, in each warp's own ring slots (free once its copies
  // have landed), so that three ring blocks of k = 4096 fit an SM.
  __shared__ float reduced_static[S > 1 && !kRing ? kBlockWarps : 1][32][4];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int g = lane / 4;
  const int q = lane % 4;
  const int slice = warp % S;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * kTiles + warp / S) * kTileRows;
  const int64_t chunks = a.k / 16;
  const int64_t lo_row = row0 + g;
  const int64_t hi_row = row0 + g + 8;
  // Rows past n read row 0 (any readable row: their products are never stored).
  const uint4* w_lo = a.w + (lo_row < a.n ? lo_row : 0) * chunks;
  const uint4* w_hi = a.w + (hi_row < a.n ? hi_row : 0) * chunks;
  const int64_t first = static_cast<int64_t>(slice) * kStepChunks + q;
  constexpr int64_t kStride = static_cast<int64_t>(kStepChunks) * S;
  // The steps of this warp's slice (those whose first chunk is inside the row: the same for every
  // lane of the warp), and of this lane's (one fewer where the last step is ragged): 32-bit counts,
  // so that a step after the PDL wait spends no instructions on 64-bit bounds. The steps after the
  // wait are what limits this kernel: each instruction there costs the 8B fp8 step ~4-6 us (widening
  // half or all of the weights by integer logic instead of cvt added 20 or 40 instructions a step
  // and lost 2.552 -> 2.681 / 2.809 ms). Dropping the 64-bit bounds, the predicated input loads and
  // the branches between prefetched steps (36 -> ~27 instructions a step) gained batch 1
  // 2.655 -> 2.622 ms and batch 8 2.974 -> 2.907 (H200, one engine, 3 interleaved rounds).
  const int steps = static_cast<int>((chunks - (first - q) + kStride - 1) / kStride);
  const int lane_steps = chunks > first ? static_cast<int>((chunks - first + kStride - 1) / kStride) : 0;
  const auto chunk = [&](int u) { return first + static_cast<int64_t>(u) * kStride; };
  const auto weights = [&](const uint4* w, int u) { return u < lane_steps ? __ldcs(w + chunk(u)) : make_uint4(0, 0, 0, 0); };

  // As in gemv_kernel: the first steps' weights are loaded before waiting on the previous kernel,
  // and so is the residual slice 0 adds its sums to where the caller vouches for it (Args::y_settled).
  uint4 lo0[kRing ? 1 : P];
  uint4 hi0[kRing ? 1 : P];
  // Where the staged rows go: the normed E4M3 rows (kNorm), their f16 widening (kWide), then the
  // rings. Ring slot u of this warp: [u][row g or g + 8][lane], so a warp's reads of a slot are 512
  // contiguous bytes (no bank conflicts).
  auto* const x_h = reinterpret_cast<Half16*>(x_s + (kNorm ? M * chunks : 0));
  uint4* const rings = reinterpret_cast<uint4*>(x_h + M * chunks);
  uint4* const ring = rings + static_cast<int64_t>(warp) * P * 64;
  const auto fetch = [&](int slot, int u) {
    if (u < steps) {  // warp-uniform
      const bool valid = u < lane_steps;  // zeros past the row's end: garbage E4M3 may be NaN, and NaN * 0 is NaN
      const int64_t c = valid ? chunk(u) : 0;
      cp_async_16_or_zero(ring + slot * 64 + lane, w_lo + c, valid);
      cp_async_16_or_zero(ring + slot * 64 + 32 + lane, w_hi + c, valid);
    }
    cp_async_commit();  // one group per step, empty or not, so wait_group counts steps
  };
#pragma unroll
  for (int u = 0; u < P; ++u) {
    if constexpr (kRing) {
      fetch(u, u);
    } else {
      lo0[u] = weights(w_lo, u);
      hi0[u] = weights(w_hi, u);
    }
  }
  float settled[4] = {};
  const bool early = !kSilu && a.y_settled && a.beta != 0.0f && slice == 0;
  if (early) each_fragment_output<M>(a, lo_row, q, [&](int64_t row, int i, int f) { settled[f] = __ldcg(a.y + i * a.n + row); });
  wait_for_producer();
  let_consumer_start();
  if constexpr (kNorm) stage_normed_rows<Fp8Chunk, M>(a, x_s);
  const uint4* x = kNorm ? x_s : a.x;
  if constexpr (kWide) stage_input_rows<M>(x, chunks, x_h);
  // Input row g is MMA column g, and only columns below M are stored. Staged, every lane reads
  // without a predicate: lanes of g >= M read row M - 1, and a ragged step's lanes past the row's
  // end (whose weights are zeros) its last chunk, finite values of the same row.
  const int x_row = (g < M ? g : M - 1) * static_cast<int>(chunks);
  const int last_chunk = static_cast<int>(chunks) - 1;
  const auto input = [&](int u) {
    if constexpr (kWide) {
      return x_h[x_row + min(static_cast<int>(first) + u * static_cast<int>(kStride), last_chunk)];
    } else {
      if (g >= M || u >= lane_steps) return Half16{};
      return widen(x[g * chunks + chunk(u)]);
    }
  };

  float acc[2][4] = {};
  if constexpr (kRing) {
    int slot = 0;
    for (int u = 0; u < steps; ++u) {
      cp_async_wait<P - 1>();  // this step's group: every one but the P - 1 newest
      const uint4 lo = ring[slot * 64 + lane];
      const uint4 hi = ring[slot * 64 + 32 + lane];
      fetch(slot, u + P);  // after the reads above, in this thread's program order
      apply_step(acc, lo, hi, input(u));
      slot = slot + 1 == P ? 0 : slot + 1;
    }
    cp_async_wait<0>();  // no copy may still be landing in shared memory when the block exits
  } else {
    if (steps >= P) {
      // Every prefetched step taken (the 8B shapes' slices): no branch between the steps.
#pragma unroll
      for (int u = 0; u < P; ++u) apply_step(acc, lo0[u], hi0[u], input(u));
    } else {
#pragma unroll
      for (int u = 0; u < P; ++u) {
        if (u >= steps) break;  // warp-uniform: every lane of a warp takes the same steps
        apply_step(acc, lo0[u], hi0[u], input(u));
      }
    }
    // Four steps' loads in flight per warp: the tile's few warps per SM must cover the memory latency.
#pragma unroll 4
    for (int u = P; u < steps; ++u) apply_step(acc, weights(w_lo, u), weights(w_hi, u), input(u));
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) acc[0][i] += acc[1][i];

  if constexpr (S > 1) {
    const auto reduced = [&](int w) -> float* {
      if constexpr (kRing) return reinterpret_cast<float*>(rings + static_cast<int64_t>(w) * P * 64) + lane * 4;
      else return reduced_static[w][lane];
    };
    float* const mine = reduced(warp);
#pragma unroll
    for (int i = 0; i < 4; ++i) mine[i] = acc[0][i];
    __syncthreads();
    if (slice != 0) return;
    for (int s = 1; s < S; ++s) {
      const float* const theirs = reduced(warp + s);
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[0][i] += theirs[i];
    }
  }
  store_fragment<M, kSilu>(a, lo_row, g, q, acc[0], early, settled);
}

template <int M, int S, bool kNorm, bool kSilu, bool kWide, int P, bool kRing = false>
void launch_mma_wide(const Args& a, size_t shared, cudaStream_t stream) {
  constexpr int64_t rows_per_block = static_cast<int64_t>(kTileRows) * (kBlockWarpsOf<S> / S);
  const dim3 blocks(static_cast<unsigned>((a.n + rows_per_block - 1) / rows_per_block));
  if constexpr (kWide) {
    // Past 48 KB a kernel must opt in to its dynamic shared memory, once (not a stream operation:
    // legal while a decode graph is being captured). The ring's blocks (~92 KB for the 8B down
    // projection) also ask for the largest carveout, or only one would fit an SM.
    static const bool opted_in = [] {
      auto* kernel = gemv_mma_kernel<M, S, kNorm, kSilu, kWide, P, kRing>;
      check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(kGemvMmaSharedBytes + (kRing ? ring_bytes(P) : 0))),
                 "gemv_mma_kernel shared memory limit", __FILE__, __LINE__);
      if constexpr (kRing) {
        check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                        cudaSharedmemCarveoutMaxShared),
                   "gemv_mma_kernel shared memory carveout", __FILE__, __LINE__);
      }
      return true;
    }();
    (void)opted_in;
  }
  launch_kernel_shared("gemv_mma_kernel", gemv_mma_kernel<M, S, kNorm, kSilu, kWide, P, kRing>, blocks,
                       dim3(kBlockWarpsOf<S> * 32), shared, stream, a);
}

bool ring_enabled() {
  static const bool on = env_switch("KILN_CUDA_GEMV_RING", true);
  return on;
}

bool deep_prefetch_enabled() {
  static const bool on = env_switch("KILN_CUDA_GEMV_DEEP_PREFETCH", true);
  return on;
}

bool deep_stage_enabled() {
  static const bool on = env_switch("KILN_CUDA_GEMV_DEEP_STAGE", true);
  return on;
}

template <int M, int S, bool kNorm, bool kSilu, int P>
void launch_mma_one(const Args& a, cudaStream_t stream) {
  const size_t normed = kNorm ? static_cast<size_t>(M * a.k) : 0;
  const size_t wide = static_cast<size_t>(M * a.k) * 2;
  if (a.stage_input && normed + wide <= static_cast<size_t>(kGemvMmaSharedBytes)) {
    if constexpr (M == 1 && S == kWarps && P == kMmaDeepPrefetchSteps && !kNorm) {
      // A slice longer than the prefetched steps (8B down): the rest streams through the ring.
      // (The E4M3 GEMVs never take the norm: TunedGemm::fuses_norm.)
      if (a.k > kDeepPrefetchMinK && ring_enabled()) {
        launch_mma_wide<M, S, kNorm, kSilu, true, P, true>(a, normed + wide + ring_bytes(P), stream);
        return;
      }
    }
    launch_mma_wide<M, S, kNorm, kSilu, true, P>(a, normed + wide, stream);
  } else {
    launch_mma_wide<M, S, kNorm, kSilu, false, P>(a, normed, stream);
  }
}

// P1: the prefetch depth of one input row (more rows keep kMmaPrefetchSteps).
template <int S, bool kNorm, bool kSilu, int P1>
void launch_mma_rows(const Args& a, int64_t m, cudaStream_t stream) {
  constexpr int P = kMmaPrefetchSteps;
  switch (m) {
    case 1: launch_mma_one<1, S, kNorm, kSilu, P1>(a, stream); return;
    case 2: launch_mma_one<2, S, kNorm, kSilu, P>(a, stream); return;
    case 3: launch_mma_one<3, S, kNorm, kSilu, P>(a, stream); return;
    case 4: launch_mma_one<4, S, kNorm, kSilu, P>(a, stream); return;
  }
  if constexpr (!kNorm) {
    switch (m) {
      case 5: launch_mma_one<5, S, kNorm, kSilu, P>(a, stream); return;
      case 6: launch_mma_one<6, S, kNorm, kSilu, P>(a, stream); return;
      case 7: launch_mma_one<7, S, kNorm, kSilu, P>(a, stream); return;
      case 8: launch_mma_one<8, S, kNorm, kSilu, P>(a, stream); return;
    }
  }
  throw Error("kiln-gemv: " + std::to_string(m) + " rows are not supported here");
}

template <int S, int P1>
void launch_mma_split(const Args& a, int64_t m, bool norm, bool silu, cudaStream_t stream) {
  if (norm && silu) launch_mma_rows<S, true, true, P1>(a, m, stream);
  else if (norm) launch_mma_rows<S, true, false, P1>(a, m, stream);
  else if (silu) launch_mma_rows<S, false, true, P1>(a, m, stream);
  else launch_mma_rows<S, false, false, P1>(a, m, stream);
}

void launch_mma(const Args& a, int64_t m, int split, bool norm, bool silu, cudaStream_t stream) {
  switch (split) {
    case 1: launch_mma_split<1, kMmaPrefetchSteps>(a, m, norm, silu, stream); return;
    case 2: launch_mma_split<2, kMmaPrefetchSteps>(a, m, norm, silu, stream); return;
    case 4: launch_mma_split<4, kMmaPrefetchSteps>(a, m, norm, silu, stream); return;
    case 8:
      if (a.deep_prefetch && a.k >= kDeepPrefetchMinK && deep_prefetch_enabled()) {
        Args deep = a;
        deep.stage_input = a.stage_input || (m == 1 && deep_stage_enabled());
        launch_mma_split<8, kMmaDeepPrefetchSteps>(deep, m, norm, silu, stream);
      } else {
        launch_mma_split<8, kMmaPrefetchSteps>(a, m, norm, silu, stream);
      }
      return;
    case 16: launch_mma_split<16, kMmaPrefetchSteps>(a, m, norm, silu, stream); return;
  }
  throw Error("kiln-gemv: split " + std::to_string(split) + " is not one of the E4M3 splits (1, 2, 4, 8, 16)");
}

}  // namespace

void launch_fp8(const Args& a, int64_t m, int split, bool norm, bool silu, cudaStream_t stream) {
  if (split == kGemvWgmmaSplit) {
    launch_fp8_wgmma(a, m, silu, stream);
    return;
  }
  launch_mma(a, m, split, norm, silu, stream);
}

}  // namespace kiln::cuda::gemv_detail
