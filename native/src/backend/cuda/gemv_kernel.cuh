#pragma once

// The kiln-gemv CUDA-core kernel (gemv.h), instantiated for bf16 in gemv_bf16.cu, and the pieces
// the E4M3 tensor-core kernel of gemv_fp8.cu shares with it (two translation units: their
// instantiations compile in parallel).

#include "backend/cuda/gemv.h"
#include "backend/cuda/launch.cuh"

namespace kiln::cuda::gemv_detail {

constexpr int kWarps = 8;
constexpr int kMaxWarps = 16;  // the E4M3 GEMV's split 16 runs blocks of 16 warps
constexpr int kPrefetchChunks = 4;  // per lane and row, issued before the wait on the previous kernel

struct Args {
  const uint4* w = nullptr;
  int64_t n = 0;
  int64_t k = 0;
  float scale = 1.0f;
  const uint4* x = nullptr;
  const float* h = nullptr;
  const float* gamma = nullptr;
  float eps = 0.0f;
  float in_inv_scale = 1.0f;
  float* y = nullptr;
  float beta = 0.0f;
  bool y_settled = false;  // GemvOut::y_settled
  void* act = nullptr;
  float act_inv_scale = 1.0f;
  bool stage_input = true;  // E4M3: widen the input rows in shared memory first, where they fit
  bool deep_prefetch = true;  // E4M3, one row, split 8: 8 steps before the wait (gemv_fp8.cu)
};

// One 16-byte chunk of a row: unpacked to fp32, packed from fp32 (as the norm / SiLU kernels store).
struct Bf16Chunk {
  using Element = bf16;
  static constexpr int kElements = 8;
  __device__ __forceinline__ static void unpack(const uint4& v, float* out) {
    const auto* v2 = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float2 f = __bfloat1622float2(v2[e]);
      out[2 * e] = f.x;
      out[2 * e + 1] = f.y;
    }
  }
  __device__ __forceinline__ static Element convert(float v, float) { return __float2bfloat16(v); }
};

// E4M3 as the norm staging writes it (the tensor-core kernel reads the weights itself).
struct Fp8Chunk {
  using Element = fp8;
  __device__ __forceinline__ static Element convert(float v, float inv_scale) { return fp8(v * inv_scale); }
};

// The E4M3 kernels' accumulators (mma.sync's C fragment of a 16-row tile, and each warp's 16 rows
// of wgmma's m64n8 D: the same layout) as lane (g, q) holds them: weight rows lo_row (the tile's
// row g) and lo_row + 8, input rows 2q and 2q + 1. visit(row, input row, fragment index) for those
// inside n and M.
template <int M, typename Visit>
__device__ __forceinline__ void each_fragment_output(const Args& a, int64_t lo_row, int q, Visit&& visit) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t row = lo_row + 8 * r;
    if (row >= a.n) break;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int i = 2 * q + j;
      if (i >= M) break;
      visit(row, i, 2 * r + j);
    }
  }
}

// An E4M3 kernel's outputs from its fragment sums (times a.scale): the SiLU·mul of (gate, up) row
// pairs as E4M3 (kSilu), or y (+ beta · the residual: `settled` where it was read before the wait).
// With kSilu every lane must come here: up sits 4 lanes on (rows 2j, 2j + 1 are gate_j and up_j, n
// even, tiles start at even rows).
template <int M, bool kSilu>
__device__ __forceinline__ void store_fragment(const Args& a, int64_t lo_row, int g, int q, const float* sum,
                                               bool early, const float (&settled)[4]) {
  if constexpr (kSilu) {
    float up[4];
#pragma unroll
    for (int f = 0; f < 4; ++f) up[f] = __shfl_down_sync(0xffffffffu, sum[f], 4);
    if (g % 2 != 0) return;
    auto* act = static_cast<fp8*>(a.act);
    const int64_t half = a.n / 2;
    each_fragment_output<M>(a, lo_row, q, [&](int64_t row, int i, int f) {
      const float gate = a.scale * sum[f];
      const float u = a.scale * up[f];
      act[i * half + row / 2] = Fp8Chunk::convert(gate / (1.0f + __expf(-gate)) * u, a.act_inv_scale);
    });
  } else {
    each_fragment_output<M>(a, lo_row, q, [&](int64_t row, int i, int f) {
      float* out = a.y + i * a.n + row;
      *out = a.beta == 0.0f ? a.scale * sum[f] : a.scale * sum[f] + a.beta * (early ? settled[f] : *out);
    });
  }
}

// x_s[i][c] = the normed (and, for fp8, quantized) chunk c of row i, for all M rows; one pass for the
// sums of squares, one to scale (the row is then in L1). Both passes move a float4 of the row (and of
// gamma) per thread and step, so every thread of the block has work even for E4M3's 16-element chunks.
template <typename Chunk, int M>
__device__ void stage_normed_rows(const Args& a, uint4* x_s) {
  using Element = typename Chunk::Element;
  __shared__ float partial[kMaxWarps][M];
  __shared__ float inv[M];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int quads = static_cast<int>(a.k / 4);
  const auto* h4 = reinterpret_cast<const float4*>(a.h);
  float sq[M];
#pragma unroll
  for (int i = 0; i < M; ++i) {
    sq[i] = 0.0f;
    for (int j = threadIdx.x; j < quads; j += blockDim.x) {
      const float4 v = h4[i * quads + j];
      sq[i] += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) sq[i] += __shfl_xor_sync(0xffffffffu, sq[i], offset);
    if (lane == 0) partial[warp][i] = sq[i];
  }
  __syncthreads();
  if (threadIdx.x < M) {
    float total = 0.0f;
    for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) total += partial[w][threadIdx.x];
    inv[threadIdx.x] = rsqrtf(total / static_cast<float>(a.k) + a.eps);
  }
  __syncthreads();
  // gamma 1 when absent: 1 · normed is normed exactly, as the norm kernels store it.
  const auto* g4 = reinterpret_cast<const float4*>(a.gamma);
  auto* out = reinterpret_cast<Element*>(x_s);
  for (int idx = threadIdx.x; idx < M * quads; idx += blockDim.x) {
    const int i = M == 1 ? 0 : idx / quads;
    const int q = M == 1 ? idx : idx - i * quads;
    const float4 v = h4[idx];
    const float4 g = a.gamma ? g4[q] : make_float4(1.0f, 1.0f, 1.0f, 1.0f);
    const float r = inv[i];
    union {
      Element e[4];
      uint32_t u[sizeof(Element)];
    } packed;
    packed.e[0] = Chunk::convert(g.x * (v.x * r), a.in_inv_scale);
    packed.e[1] = Chunk::convert(g.y * (v.y * r), a.in_inv_scale);
    packed.e[2] = Chunk::convert(g.z * (v.z * r), a.in_inv_scale);
    packed.e[3] = Chunk::convert(g.w * (v.w * r), a.in_inv_scale);
    if constexpr (sizeof(Element) == 2) *reinterpret_cast<uint2*>(out + 4 * idx) = make_uint2(packed.u[0], packed.u[1]);
    else *reinterpret_cast<uint32_t*>(out + 4 * idx) = packed.u[0];
  }
  __syncthreads();
}

template <typename Chunk, int M, int S, bool kNorm, bool kSilu>
__global__ __launch_bounds__(kWarps * 32) void gemv_kernel(Args a) {
  constexpr int E = Chunk::kElements;
  constexpr int P = kWarps / S;  // row pairs per block
  extern __shared__ uint4 x_s[];  // normed input: [M][k / E]
  __shared__ float reduced[kWarps][2][M];
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int pair = warp / S;
  const int slice = warp % S;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * P + pair) * 2;
  const int64_t chunks = a.k / E;
  const bool active = row0 < a.n;
  const bool second = row0 + 1 < a.n;
  const uint4* w0 = a.w + (active ? row0 : 0) * chunks;
  const uint4* w1 = a.w + (second ? row0 + 1 : (active ? row0 : 0)) * chunks;
  // The first kPrefetchChunks chunks of each row go to registers before the wait: weights are
  // read-only, so their latency overlaps the previous kernel's tail (an L2 prefetch alone did less:
  // H100, 8B fp8 batch 1, 3.485 -> 3.429 ms with the registers).
  uint4 first0[kPrefetchChunks];
  uint4 first1[kPrefetchChunks];
  if (active) {
#pragma unroll
    for (int u = 0; u < kPrefetchChunks; ++u) {
      const int64_t c = (static_cast<int64_t>(u) * S + slice) * 32 + lane;
      if (c >= chunks) break;
      first0[u] = __ldcs(w0 + c);
      first1[u] = __ldcs(w1 + c);
    }
  }
  // The residual this warp adds its sums to, where the caller vouches that the previous kernel did not
  // write it (only slice 0's lane 0 stores). Up to 2 input rows: past that the held values cost the
  // registers that keep four blocks an SM (3 rows: 64 -> 100).
  constexpr int kSettledRows = !kSilu && M <= 2 ? M : 1;
  float settled[2][kSettledRows];
  const bool early = kSettledRows == M && !kSilu && a.y_settled && a.beta != 0.0f && active && slice == 0 && lane == 0;
  if (early) {
#pragma unroll
    for (int i = 0; i < kSettledRows; ++i) {
      settled[0][i] = __ldcg(a.y + i * a.n + row0);
      settled[1][i] = second ? __ldcg(a.y + i * a.n + row0 + 1) : 0.0f;
    }
  }
  wait_for_producer();
  let_consumer_start();
  if constexpr (kNorm) stage_normed_rows<Chunk, M>(a, x_s);
  const uint4* x = kNorm ? x_s : a.x;

  float acc[2][M];
#pragma unroll
  for (int i = 0; i < M; ++i) acc[0][i] = acc[1][i] = 0.0f;
  const auto apply = [&](int64_t c, const uint4& v0, const uint4& v1) {
    float wa[E];
    float wb[E];
    Chunk::unpack(v0, wa);
    Chunk::unpack(v1, wb);
#pragma unroll
    for (int i = 0; i < M; ++i) {
      float xf[E];
      Chunk::unpack(x[i * chunks + c], xf);
#pragma unroll
      for (int e = 0; e < E; ++e) {
        acc[0][i] = fmaf(wa[e], xf[e], acc[0][i]);
        acc[1][i] = fmaf(wb[e], xf[e], acc[1][i]);
      }
    }
  };
  if (active) {
    int64_t c = slice * 32 + lane;
#pragma unroll
    for (int u = 0; u < kPrefetchChunks; ++u, c += 32 * S) {
      if (c >= chunks) break;
      apply(c, first0[u], first1[u]);
    }
#pragma unroll 4
    for (; c < chunks; c += 32 * S) apply(c, __ldcs(w0 + c), __ldcs(w1 + c));
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
#pragma unroll
    for (int i = 0; i < M; ++i) {
      float v = acc[r][i];
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
      acc[r][i] = v;
    }
  }
  if constexpr (S > 1) {
    if (lane == 0) {
#pragma unroll
      for (int i = 0; i < M; ++i) {
        reduced[warp][0][i] = acc[0][i];
        reduced[warp][1][i] = acc[1][i];
      }
    }
    __syncthreads();
    if (slice == 0 && lane == 0) {
#pragma unroll
      for (int i = 0; i < M; ++i) {
        for (int s = 1; s < S; ++s) {
          acc[0][i] += reduced[warp + s][0][i];
          acc[1][i] += reduced[warp + s][1][i];
        }
      }
    }
  }
  if (slice != 0 || lane != 0 || !active) return;
  if constexpr (kSilu) {
    // Rows row0, row0 + 1 are gate_j and up_j (n even, so a pair never straddles the end).
    auto* act = static_cast<typename Chunk::Element*>(a.act);
    const int64_t half = a.n / 2;
    const int64_t j = row0 / 2;
#pragma unroll
    for (int i = 0; i < M; ++i) {
      const float g = a.scale * acc[0][i];
      const float u = a.scale * acc[1][i];
      act[i * half + j] = Chunk::convert(g / (1.0f + __expf(-g)) * u, a.act_inv_scale);
    }
  } else {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      if (r == 1 && !second) break;
#pragma unroll
      for (int i = 0; i < M; ++i) {
        float* out = a.y + i * a.n + row0 + r;
        const float residual = early ? settled[r][i < kSettledRows ? i : 0] : *out;
        *out = a.beta == 0.0f ? a.scale * acc[r][i] : a.scale * acc[r][i] + a.beta * residual;
      }
    }
  }
}

template <typename Chunk, int M, int S, bool kNorm, bool kSilu>
void launch_one(const Args& a, cudaStream_t stream) {
  constexpr int64_t rows_per_block = gemv_rows_per_block(S);
  static_assert(rows_per_block == 2 * kWarps / S);
  const dim3 blocks(static_cast<unsigned>((a.n + rows_per_block - 1) / rows_per_block));
  const size_t shared = kNorm ? static_cast<size_t>(M * a.k) * sizeof(typename Chunk::Element) : 0;
  launch_kernel_shared("gemv_kernel", gemv_kernel<Chunk, M, S, kNorm, kSilu>, blocks, dim3(kWarps * 32),
                       shared, stream, a);
}

template <typename Chunk, int S, bool kNorm, bool kSilu>
void launch_rows(const Args& a, int64_t m, cudaStream_t stream) {
  switch (m) {
    case 1: launch_one<Chunk, 1, S, kNorm, kSilu>(a, stream); return;
    case 2: launch_one<Chunk, 2, S, kNorm, kSilu>(a, stream); return;
    case 3: launch_one<Chunk, 3, S, kNorm, kSilu>(a, stream); return;
    case 4: launch_one<Chunk, 4, S, kNorm, kSilu>(a, stream); return;
  }
  if constexpr (!kNorm) {
    switch (m) {
      case 5: launch_one<Chunk, 5, S, kNorm, kSilu>(a, stream); return;
      case 6: launch_one<Chunk, 6, S, kNorm, kSilu>(a, stream); return;
      case 7: launch_one<Chunk, 7, S, kNorm, kSilu>(a, stream); return;
      case 8: launch_one<Chunk, 8, S, kNorm, kSilu>(a, stream); return;
    }
  }
  throw Error("kiln-gemv: " + std::to_string(m) + " rows are not supported here");
}

template <typename Chunk, int S>
void launch_split(const Args& a, int64_t m, bool norm, bool silu, cudaStream_t stream) {
  if (norm && silu) launch_rows<Chunk, S, true, true>(a, m, stream);
  else if (norm) launch_rows<Chunk, S, true, false>(a, m, stream);
  else if (silu) launch_rows<Chunk, S, false, true>(a, m, stream);
  else launch_rows<Chunk, S, false, false>(a, m, stream);
}

template <typename Chunk>
void launch(const Args& a, int64_t m, int split, bool norm, bool silu, cudaStream_t stream) {
  switch (split) {
    case 1: launch_split<Chunk, 1>(a, m, norm, silu, stream); return;
    case 2: launch_split<Chunk, 2>(a, m, norm, silu, stream); return;
    case 4: launch_split<Chunk, 4>(a, m, norm, silu, stream); return;
    case 8: launch_split<Chunk, 8>(a, m, norm, silu, stream); return;
  }
  throw Error("kiln-gemv: split " + std::to_string(split) + " is not one of the compiled splits (1, 2, 4, 8)");
}

void launch_bf16(const Args& a, int64_t m, int split, bool norm, bool silu, cudaStream_t stream);
void launch_fp8(const Args& a, int64_t m, int split, bool norm, bool silu, cudaStream_t stream);
// gemv_fp8_wgmma.cu: up to 8 rows of E4M3 on wgmma (gemv.h, kGemvWgmmaSplit).
bool wgmma_fits(int64_t m, int64_t k, bool norm);
void launch_fp8_wgmma(const Args& a, int64_t m, bool silu, cudaStream_t stream);

}  // namespace kiln::cuda::gemv_detail
