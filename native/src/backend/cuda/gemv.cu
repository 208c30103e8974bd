#include "backend/cuda/check.h"
#include "backend/cuda/gemv.h"

namespace kiln::cuda {

namespace {

constexpr int kGemvWarps = 8;
constexpr int kGemvRowsPerWarp = 2;

__device__ __forceinline__ void fma8(const uint4& w, const uint4& x, float& acc) {
  const auto* w2 = reinterpret_cast<const __nv_bfloat162*>(&w);
  const auto* x2 = reinterpret_cast<const __nv_bfloat162*>(&x);
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const float2 wf = __bfloat1622float2(w2[e]);
    const float2 xf = __bfloat1622float2(x2[e]);
    acc = fmaf(wf.x, xf.x, acc);
    acc = fmaf(wf.y, xf.y, acc);
  }
}

template <int M>
__global__ __launch_bounds__(kGemvWarps * 32) void gemv_kernel(const bf16* __restrict__ w, const bf16* __restrict__ x,
                                                              int64_t n, int64_t k, float* __restrict__ y, float beta) {
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * kGemvWarps + warp) * kGemvRowsPerWarp;
  if (row0 >= n) return;
  const int64_t chunks = k / 8;
  const bool second = row0 + 1 < n;
  const uint4* w0 = reinterpret_cast<const uint4*>(w + row0 * k);
  const uint4* w1 = reinterpret_cast<const uint4*>(w + (second ? row0 + 1 : row0) * k);
  float acc[kGemvRowsPerWarp][M];
#pragma unroll
  for (int r = 0; r < kGemvRowsPerWarp; ++r) {
#pragma unroll
    for (int i = 0; i < M; ++i) acc[r][i] = 0.0f;
  }
#pragma unroll 4
  for (int64_t c = lane; c < chunks; c += 32) {
    const uint4 a = __ldcs(w0 + c);
    const uint4 b = __ldcs(w1 + c);
#pragma unroll
    for (int i = 0; i < M; ++i) {
      const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + i * k) + c);
      fma8(a, xv, acc[0][i]);
      fma8(b, xv, acc[1][i]);
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
        *out = beta == 0.0f ? acc[r][i] : acc[r][i] + beta * *out;
      }
    }
  }
}

template <int M>
void launch(const bf16* w, const bf16* x, int64_t n, int64_t k, float* y, float beta, cudaStream_t stream) {
  const int64_t rows_per_block = kGemvWarps * kGemvRowsPerWarp;
  gemv_kernel<M><<<static_cast<unsigned>((n + rows_per_block - 1) / rows_per_block), kGemvWarps * 32, 0, stream>>>(
      w, x, n, k, y, beta);
}

}  // namespace

bool gemv_supports(int64_t m, int64_t k) { return m >= 1 && m <= kGemvMaxRows && k % 8 == 0; }

void gemv_bf16(const bf16* w, const bf16* x, int64_t m, int64_t n, int64_t k, float* y, float beta, cudaStream_t stream) {
  if (!gemv_supports(m, k)) {
    throw Error("kiln-gemv: m=" + std::to_string(m) + " k=" + std::to_string(k) + " is not supported (m <= 8, k % 8 == 0)");
  }
  switch (m) {
    case 1: launch<1>(w, x, n, k, y, beta, stream); break;
    case 2: launch<2>(w, x, n, k, y, beta, stream); break;
    case 3: launch<3>(w, x, n, k, y, beta, stream); break;
    case 4: launch<4>(w, x, n, k, y, beta, stream); break;
    case 5: launch<5>(w, x, n, k, y, beta, stream); break;
    case 6: launch<6>(w, x, n, k, y, beta, stream); break;
    case 7: launch<7>(w, x, n, k, y, beta, stream); break;
    default: launch<8>(w, x, n, k, y, beta, stream); break;
  }
  KILN_CUDA_CHECK_LAUNCH("gemv_kernel");
}

}  // namespace kiln::cuda
