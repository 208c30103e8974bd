#include <cuda_fp16.h>

#include "backend/cuda/check.h"
#include "backend/cuda/gemv.h"
#include "backend/cuda/launch.cuh"

namespace kiln::cuda {

namespace {

constexpr int kGemvWarps = 8;
constexpr int kGemvRowsPerWarp = 2;
constexpr int kPrefetchChunks = 4;  // per lane and row, issued before the wait on the previous kernel

// One 16-byte chunk of a row, unpacked to fp32.
struct Bf16Chunk {
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
};

struct Fp8Chunk {
  static constexpr int kElements = 16;
  __device__ __forceinline__ static void unpack(const uint4& v, float* out) {
    const auto* v2 = reinterpret_cast<const __nv_fp8x2_storage_t*>(&v);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float2 f = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(v2[e], __NV_E4M3)));
      out[2 * e] = f.x;
      out[2 * e + 1] = f.y;
    }
  }
};

__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

template <typename Chunk, int M>
__global__ __launch_bounds__(kGemvWarps * 32) void gemv_kernel(const uint4* __restrict__ w, const uint4* __restrict__ x,
                                                              int64_t n, int64_t k, float* __restrict__ y, float scale,
                                                              float beta) {
  constexpr int E = Chunk::kElements;
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * kGemvWarps + warp) * kGemvRowsPerWarp;
  const int64_t chunks = k / E;
  const bool second = row0 + 1 < n;
  const uint4* w0 = w + row0 * chunks;
  const uint4* w1 = w + (second ? row0 + 1 : row0) * chunks;
  if (row0 < n) {
#pragma unroll
    for (int u = 0; u < kPrefetchChunks; ++u) {
      const int64_t c = lane + 32 * u;
      if (c < chunks) {
        prefetch_l2(w0 + c);
        prefetch_l2(w1 + c);
      }
    }
  }
  wait_for_producer();
  let_consumer_start();
  if (row0 >= n) return;
  float acc[kGemvRowsPerWarp][M];
#pragma unroll
  for (int r = 0; r < kGemvRowsPerWarp; ++r) {
#pragma unroll
    for (int i = 0; i < M; ++i) acc[r][i] = 0.0f;
  }
#pragma unroll 4
  for (int64_t c = lane; c < chunks; c += 32) {
    float wa[E];
    float wb[E];
    Chunk::unpack(__ldcs(w0 + c), wa);
    Chunk::unpack(__ldcs(w1 + c), wb);
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
  }
#pragma unroll
  for (int r = 0; r < kGemvRowsPerWarp; ++r) {
#pragma unroll
    for (int i = 0; i < M; ++i) {
      float v = acc[r][i];
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
      acc[r][i] = v;
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < kGemvRowsPerWarp; ++r) {
      if (r == 1 && !second) break;
#pragma unroll
      for (int i = 0; i < M; ++i) {
        float* out = y + i * n + row0 + r;
        *out = beta == 0.0f ? scale * acc[r][i] : scale * acc[r][i] + beta * *out;
      }
    }
  }
}

template <typename Chunk>
void launch(const void* w, const void* x, int64_t m, int64_t n, int64_t k, float scale, float* y, float beta,
            cudaStream_t stream) {
  const int64_t rows_per_block = kGemvWarps * kGemvRowsPerWarp;
  const dim3 blocks(static_cast<unsigned>((n + rows_per_block - 1) / rows_per_block));
  const dim3 threads(kGemvWarps * 32);
  const auto* wv = static_cast<const uint4*>(w);
  const auto* xv = static_cast<const uint4*>(x);
  switch (m) {
    case 1: launch_kernel("gemv_kernel", gemv_kernel<Chunk, 1>, blocks, threads, stream, wv, xv, n, k, y, scale, beta); break;
    case 2: launch_kernel("gemv_kernel", gemv_kernel<Chunk, 2>, blocks, threads, stream, wv, xv, n, k, y, scale, beta); break;
    case 3: launch_kernel("gemv_kernel", gemv_kernel<Chunk, 3>, blocks, threads, stream, wv, xv, n, k, y, scale, beta); break;
    case 4: launch_kernel("gemv_kernel", gemv_kernel<Chunk, 4>, blocks, threads, stream, wv, xv, n, k, y, scale, beta); break;
    case 5: launch_kernel("gemv_kernel", gemv_kernel<Chunk, 5>, blocks, threads, stream, wv, xv, n, k, y, scale, beta); break;
    case 6: launch_kernel("gemv_kernel", gemv_kernel<Chunk, 6>, blocks, threads, stream, wv, xv, n, k, y, scale, beta); break;
    case 7: launch_kernel("gemv_kernel", gemv_kernel<Chunk, 7>, blocks, threads, stream, wv, xv, n, k, y, scale, beta); break;
    default: launch_kernel("gemv_kernel", gemv_kernel<Chunk, 8>, blocks, threads, stream, wv, xv, n, k, y, scale, beta); break;
  }
}

}  // namespace

bool gemv_supports(int64_t m, int64_t k) { return m >= 1 && m <= kGemvMaxRows && k % Bf16Chunk::kElements == 0; }
bool gemv_fp8_supports(int64_t m, int64_t k) { return m >= 1 && m <= kGemvMaxRows && k % Fp8Chunk::kElements == 0; }

void gemv_bf16(const bf16* w, const bf16* x, int64_t m, int64_t n, int64_t k, float* y, float beta, cudaStream_t stream) {
  if (!gemv_supports(m, k)) {
    throw Error("kiln-gemv: m=" + std::to_string(m) + " k=" + std::to_string(k) + " is not supported (m <= 8, k % 8 == 0)");
  }
  launch<Bf16Chunk>(w, x, m, n, k, 1.0f, y, beta, stream);
}

void gemv_fp8(const fp8* w, const fp8* x, int64_t m, int64_t n, int64_t k, float scale, float* y, float beta,
              cudaStream_t stream) {
  if (!gemv_fp8_supports(m, k)) {
    throw Error("kiln-gemv fp8: m=" + std::to_string(m) + " k=" + std::to_string(k) +
                " is not supported (m <= 8, k % 16 == 0)");
  }
  launch<Fp8Chunk>(w, x, m, n, k, scale, y, beta, stream);
}

}  // namespace kiln::cuda
