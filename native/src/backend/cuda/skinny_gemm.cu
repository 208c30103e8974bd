#include "backend/cuda/skinny_gemm.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>

#include "backend/cuda/check.h"
#include "backend/cuda/launch.cuh"

namespace kiln::cuda {

namespace {

// A warp multiplies 32 weight rows with all x rows (16 at the 64-row tile, which keeps 4 warps to
// issue its loads): 4, 4 and 8 warps for tiles of 64, 128 and 256 rows.
__host__ __device__ constexpr int warps_for(int tile_n) { return tile_n == 256 ? 8 : 4; }
// Three steps in flight while one is multiplied: at a 128-row tile that is 48 KiB of weights per
// block, about twice what one SM's share of HBM bandwidth times the memory latency asks for. (At 64
// rows of x a 256-row tile takes 160 KiB of shared memory, one block per SM.)
constexpr int kStages = 4;
// One pipeline step holds 128 bytes of every row (weights and x alike): 8 chunks of 16 bytes, and
// 4 MMA k-steps of 32 bytes (16 bf16 or 32 E4M3, one m16n8k16 / m16n8k32 each).
constexpr int kStepBytes = 128;
constexpr int kChunks = kStepBytes / 16;
constexpr int kMaxSplits = 8;

struct Args {
  const uint8_t* w = nullptr;  // [n, row_bytes]
  const uint8_t* x = nullptr;  // [m, row_bytes]
  int m = 0;
  int n = 0;
  int64_t row_bytes = 0;
  int steps = 0;  // ceil(row_bytes / kStepBytes)
  int steps_per_split = 0;
  float scale = 1.0f;
  float* y = nullptr;
  float beta = 0.0f;
  void* act = nullptr;  // or: the SiLU·mul output, bf16 or E4M3 as the weights
  float act_inv_scale = 1.0f;
  float* partials = nullptr;
  int32_t* counters = nullptr;
};

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Chunk c of row r sits at chunk c ^ (r % 8) of the row: the 8 rows one ldmatrix phase reads (same
// logical chunk, consecutive rows from a multiple of 8) then fall in 8 different 16-byte bank groups.
__device__ __forceinline__ uint32_t swizzled(int row, int chunk) {
  return static_cast<uint32_t>(row * kStepBytes + ((chunk ^ (row & 7)) << 4));
}

// A 16-byte copy to shared memory that writes zeros instead where `valid` is false (past n, m or k):
// the padding rows multiply as zeros and are never stored.
__device__ __forceinline__ void copy_chunk(uint32_t dst, const uint8_t* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0)
               : "memory");
}
__device__ __forceinline__ void commit_copies() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int Pending>
__device__ __forceinline__ void wait_copies() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// c += a · b on one 16 x 8 tile. An E4M3 k32 fragment has the byte layout of a bf16 k16 one (each
// 32-bit register holds 4 consecutive k instead of 2), so both read their operands the same way.
template <bool kFp8>
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (kFp8) {
    asm("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// Step `step` of `rows` rows (from `first`, `limit` of them real) into a stage buffer.
template <int kRows, int kThreads>
__device__ __forceinline__ void load_step(uint32_t stage, const uint8_t* base, int64_t first, int64_t limit,
                                          int64_t row_bytes, int step) {
  for (int i = threadIdx.x; i < kRows * kChunks; i += kThreads) {
    const int row = i / kChunks;
    const int chunk = i % kChunks;
    const int64_t byte = static_cast<int64_t>(step) * kStepBytes + chunk * 16;
    const bool valid = first + row < limit && byte < row_bytes;
    copy_chunk(stage + swizzled(row, chunk), valid ? base + (first + row) * row_bytes + byte : base, valid);
  }
}

// The 4 MMA k-steps of one pipeline step, onto c: a warp multiplies all x rows with its weight rows.
template <bool kFp8, int kTileN, int kMTiles>
__device__ __forceinline__ void multiply_step(uint32_t w_s, uint32_t x_s,
                                              float (&c)[kMTiles][kTileN / warps_for(kTileN) / 8][4]) {
  constexpr int kWarpN = kTileN / warps_for(kTileN);
  constexpr int kNTiles = kWarpN / 8;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int kk = 0; kk < kChunks / 2; ++kk) {
    // A (x rows): matrices (rows 0-7, chunk 2kk), (rows 8-15, 2kk), (rows 0-7, 2kk+1),
    // (rows 8-15, 2kk+1) = a0..a3; lanes 8j..8j+7 address matrix j's rows.
    uint32_t a_frag[kMTiles][4];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
      ldmatrix_x4(a_frag[mt], x_s + swizzled(mt * 16 + lane % 16, 2 * kk + lane / 16));
    }
    // B (weight rows = n, "col" = k-contiguous): matrices (n 0-7, chunk 2kk), (n 0-7, 2kk+1),
    // (n 8-15, 2kk), (n 8-15, 2kk+1) = b0, b1 of two 8-row tiles.
    uint32_t b_frag[kNTiles][2];
#pragma unroll
    for (int p = 0; p < kNTiles / 2; ++p) {
      uint32_t r[4];
      ldmatrix_x4(r, w_s + swizzled(warp * kWarpN + p * 16 + lane % 8 + (lane / 16) * 8, 2 * kk + (lane / 8) % 2));
      b_frag[2 * p][0] = r[0];
      b_frag[2 * p][1] = r[1];
      b_frag[2 * p + 1][0] = r[2];
      b_frag[2 * p + 1][1] = r[3];
    }
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
        if constexpr (kFp8) {
          // The E4M3 MMA keeps only 13 mantissa bits of the accumulator it adds to, truncating the
          // rest on every instruction (SageAttention2 and the DeepSeek-V3 report measured this on
          // Ada and Hopper): each one starts from zero and its 32 products are added in fp32, so
          // the truncation does not compound over k.
          float d[4] = {};
          mma<kFp8>(d, a_frag[mt], b_frag[nt][0], b_frag[nt][1]);
#pragma unroll
          for (int e = 0; e < 4; ++e) c[mt][nt][e] += d[e];
        } else {
          mma<kFp8>(c[mt][nt], a_frag[mt], b_frag[nt][0], b_frag[nt][1]);
        }
      }
    }
  }
}

// act[at] = silu(g) · u with the operations and the conversion of silu_mul_to_bf16 / _fp8
// (kernels.cu) on the fp32 values y would have held: fused and unfused outputs are bit-identical.
template <bool kFp8>
__device__ __forceinline__ void store_act(const Args& a, int64_t at, float g, float u) {
  const float v = g / (1.0f + __expf(-g)) * u;
  if constexpr (kFp8) static_cast<fp8*>(a.act)[at] = fp8(v * a.act_inv_scale);  // saturates at ±448
  else static_cast<bf16*>(a.act)[at] = __float2bfloat16(v);
}

// Block (tile, split): weight rows [tile · kTileN, +kTileN) over the split's steps of k, times all
// kMTiles · 16 (padded) rows of x. Warp w owns weight rows [w · kWarpN, +kWarpN) of the tile.
template <bool kFp8, int kTileN, int kMTiles>
__global__ void __launch_bounds__(warps_for(kTileN) * 32) skinny_gemm_kernel(Args a) {
  constexpr int kThreads = warps_for(kTileN) * 32;
  constexpr int kRows = kMTiles * 16;
  constexpr int kWarpN = kTileN / warps_for(kTileN);
  constexpr int kNTiles = kWarpN / 8;
  static_assert(kNTiles % 2 == 0, "one ldmatrix.x4 loads two 8-row weight tiles");
  extern __shared__ __align__(128) uint8_t shared[];
  const uint32_t w_stages = shared_address(shared);
  const uint32_t x_stages = w_stages + kStages * kTileN * kStepBytes;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kTileN;
  const int split = blockIdx.y;
  const int first = split * a.steps_per_split;
  const int count = max(0, min(a.steps, first + a.steps_per_split) - first);

  // Weights are no kernel's output: their first steps stream in while the previous kernel finishes.
  for (int s = 0; s < kStages - 1 && s < count; ++s) {
    load_step<kTileN, kThreads>(w_stages + s * kTileN * kStepBytes, a.w, n0, a.n, a.row_bytes, first + s);
  }
  wait_for_producer();
  let_consumer_start();
  // Group s holds step s's x (group 0 also every prologue weight step); a group per step, empty
  // ones included, so "all but kStages - 2 groups done" always means "step i has landed".
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < count) load_step<kRows, kThreads>(x_stages + s * kRows * kStepBytes, a.x, 0, a.m, a.row_bytes, first + s);
    commit_copies();
  }

  float acc[kMTiles][kNTiles][4] = {};
  for (int i = 0; i < count; ++i) {
    wait_copies<kStages - 2>();
    // Step i is visible to every warp, and every warp is done with step i - 1, whose buffers the
    // loads below refill.
    __syncthreads();
    const int next = i + kStages - 1;
    if (next < count) {
      const int slot = next % kStages;
      load_step<kTileN, kThreads>(w_stages + slot * kTileN * kStepBytes, a.w, n0, a.n, a.row_bytes, first + next);
      load_step<kRows, kThreads>(x_stages + slot * kRows * kStepBytes, a.x, 0, a.m, a.row_bytes, first + next);
    }
    commit_copies();

    const uint32_t w_s = w_stages + (i % kStages) * kTileN * kStepBytes;
    const uint32_t x_s = x_stages + (i % kStages) * kRows * kStepBytes;
    multiply_step<kFp8, kTileN, kMTiles>(w_s, x_s, acc);
  }

  // Accumulator elements 2h and 2h + 1 of tile (mt, nt): x row mt·16 + lane/4 + 8h, weight rows col
  // and col + 1, col = nt·8 + 2·(lane%4) of the warp's rows. col is even (tiles and warps start at
  // even rows), so with SiLU·mul the two are a (gate, up) pair; f gets the offset of col in y.
  const auto for_each_pair = [&](auto&& f) {
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int row = mt * 16 + lane / 4 + h * 8;
          const int64_t col = n0 + warp * kWarpN + nt * 8 + 2 * (lane % 4);
          if (row < a.m && col < a.n) {
            f(static_cast<int64_t>(row) * a.n + col, col + 1 < a.n, acc[mt][nt][2 * h], acc[mt][nt][2 * h + 1]);
          }
        }
      }
    }
  };
  const auto store_y = [&](int64_t at, float sum) {
    a.y[at] = a.beta == 0.0f ? a.scale * sum : a.scale * sum + a.beta * a.y[at];
  };
  if (gridDim.y == 1) {
    for_each_pair([&](int64_t at, bool second, float v0, float v1) {
      if (a.act) {
        store_act<kFp8>(a, at / 2, a.scale * v0, a.scale * v1);  // at / 2 = row · n/2 + col/2: n, col even
        return;
      }
      store_y(at, v0);
      if (second) store_y(at + 1, v1);
    });
    return;
  }

  float* part = a.partials + static_cast<int64_t>(split) * a.m * a.n;
  for_each_pair([&](int64_t at, bool second, float v0, float v1) {
    part[at] = v0;
    if (second) part[at + 1] = v1;
  });
  __shared__ bool s_last;
  __syncthreads();
  if (threadIdx.x == 0) {
    // One fence after the barrier publishes the whole block's partial (decode_attention.cu).
    __threadfence();
    int32_t* counter = a.counters + blockIdx.x;
    s_last = atomicAdd(counter, 1) == static_cast<int>(gridDim.y) - 1;
    if (s_last) {
      *counter = 0;  // every split of this tile has arrived: ready for the next launch
      __threadfence();
    }
  }
  __syncthreads();
  if (!s_last) return;
  const int64_t plane = static_cast<int64_t>(a.m) * a.n;
  // In split order whichever block came last; other blocks' writes are read through L2.
  const auto split_sum = [&](int64_t at) {
    float sum = 0.0f;
    for (int s = 0; s < static_cast<int>(gridDim.y); ++s) sum += __ldcg(a.partials + s * plane + at);
    return sum;
  };
  if (a.act) {
    // A thread per (gate, up) pair, so the SiLU·mul sees both sums.
    constexpr int kPairs = kTileN / 2;
    for (int i = threadIdx.x; i < a.m * kPairs; i += kThreads) {
      const int64_t col = n0 + 2 * (i % kPairs);
      if (col >= a.n) continue;
      const int64_t at = static_cast<int64_t>(i / kPairs) * a.n + col;
      store_act<kFp8>(a, at / 2, a.scale * split_sum(at), a.scale * split_sum(at + 1));
    }
    return;
  }
  for (int i = threadIdx.x; i < a.m * kTileN; i += kThreads) {
    const int64_t col = n0 + i % kTileN;
    if (col >= a.n) continue;
    const int64_t at = static_cast<int64_t>(i / kTileN) * a.n + col;
    store_y(at, split_sum(at));
  }
}

template <bool kFp8, int kTileN, int kMTiles>
void launch_tiles(const Args& a, dim3 grid, cudaStream_t stream) {
  constexpr size_t shared = static_cast<size_t>(kStages) * (kTileN + kMTiles * 16) * kStepBytes;
  const auto kernel = skinny_gemm_kernel<kFp8, kTileN, kMTiles>;
  // Past 48 KiB a kernel must ask for its dynamic shared memory, once on each device it runs on.
  static std::atomic<uint64_t> configured{0};
  int device = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&device));
  const uint64_t bit = uint64_t{1} << (device % 64);
  if (!(configured.load() & bit)) {
    KILN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)));
    configured.fetch_or(bit);
  }
  launch_kernel_shared("skinny_gemm_kernel", kernel, grid, dim3(warps_for(kTileN) * 32), shared, stream, a);
}

template <bool kFp8, int kTileN>
void launch_rows(const Args& a, dim3 grid, cudaStream_t stream) {
  switch ((a.m + 15) / 16) {
    case 1: launch_tiles<kFp8, kTileN, 1>(a, grid, stream); break;
    case 2: launch_tiles<kFp8, kTileN, 2>(a, grid, stream); break;
    case 3: launch_tiles<kFp8, kTileN, 3>(a, grid, stream); break;
    default: launch_tiles<kFp8, kTileN, 4>(a, grid, stream); break;
  }
}

template <bool kFp8>
void launch_dtype(const Args& a, int tile_n, dim3 grid, cudaStream_t stream) {
  switch (tile_n) {
    case 64: launch_rows<kFp8, 64>(a, grid, stream); break;
    case 128: launch_rows<kFp8, 128>(a, grid, stream); break;
    default: launch_rows<kFp8, 256>(a, grid, stream); break;
  }
}

}  // namespace

size_t skinny_partial_bytes(int64_t m, int64_t n, int splits) {
  return splits > 1 ? static_cast<size_t>(splits) * static_cast<size_t>(m * n) * sizeof(float) : 0;
}

bool skinny_supports(int64_t m, int64_t n, int64_t k, bool fp8, int tile_n, int splits,
                     const SkinnyWorkspace& workspace, bool silu) {
  const int64_t row_bytes = k * (fp8 ? 1 : 2);
  const bool tile_ok = std::find(std::begin(kSkinnyTiles), std::end(kSkinnyTiles), tile_n) != std::end(kSkinnyTiles);
  if (m < 1 || m > kSkinnyMaxRows || n < 1 || n > INT32_MAX || k < 1 || row_bytes % 16 != 0 || !tile_ok) return false;
  if (silu && n % 2 != 0) return false;
  if (splits == 1) return true;
  const int64_t tiles = (n + tile_n - 1) / tile_n;
  return splits > 1 && splits <= kMaxSplits && workspace.partials && workspace.counters &&
         skinny_partial_bytes(m, n, splits) <= workspace.partial_bytes && tiles <= workspace.counter_count;
}

void skinny_gemm(const void* w, const void* x, bool fp8, int64_t m, int64_t n, int64_t k, float scale,
                 const GemvOut& out, int tile_n, int splits, const SkinnyWorkspace& workspace, cudaStream_t stream) {
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const bool silu = out.act != nullptr;
  if (!skinny_supports(m, n, k, fp8, tile_n, splits, workspace, silu) || !aligned(w) || !aligned(x) ||
      (silu ? out.beta != 0.0f : !out.y)) {
    throw Error("kiln-skinny: m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k) +
                (fp8 ? " fp8" : " bf16") + (silu ? " SiLU output beta " + std::to_string(out.beta) : "") + " tile " +
                std::to_string(tile_n) + " splits " + std::to_string(splits) + " is not supported (1 <= m <= " +
                std::to_string(kSkinnyMaxRows) + ", k % " + (fp8 ? "16" : "8") +
                " == 0, 16-byte aligned w and x, an output, n even and beta 0 for the SiLU output, tile 64, 128 or "
                "256, 1.." + std::to_string(kMaxSplits) + " splits whose " +
                std::to_string(skinny_partial_bytes(m, n, splits)) + " partial bytes and " +
                std::to_string((n + tile_n - 1) / std::max(tile_n, 1)) + " counters fit the workspace's " +
                std::to_string(workspace.partial_bytes) + " and " + std::to_string(workspace.counter_count) + ")");
  }
  Args a;
  a.w = static_cast<const uint8_t*>(w);
  a.x = static_cast<const uint8_t*>(x);
  a.m = static_cast<int>(m);
  a.n = static_cast<int>(n);
  a.row_bytes = k * (fp8 ? 1 : 2);
  a.steps = static_cast<int>((a.row_bytes + kStepBytes - 1) / kStepBytes);
  a.steps_per_split = (a.steps + splits - 1) / splits;
  a.scale = scale;
  a.y = out.y;
  a.beta = out.beta;
  a.act = out.act;
  a.act_inv_scale = 1.0f / out.act_scale;  // as silu_mul_to_fp8 computes it
  a.partials = workspace.partials;
  a.counters = workspace.counters;
  const dim3 grid(static_cast<unsigned>((n + tile_n - 1) / tile_n), static_cast<unsigned>(splits));
  if (fp8) launch_dtype<true>(a, tile_n, grid, stream);
  else launch_dtype<false>(a, tile_n, grid, stream);
}

}  // namespace kiln::cuda
