#include "backend/cuda/check.h"
#include "backend/cuda/gemv.h"

namespace kiln::cuda {

namespace {

constexpr int kGemvWarps = 8;
constexpr int kGemvRowsPerWarp = 2;

__device__ __forceinline__ void unpack8(const uint4& v, float* out) {
  const auto* v2 = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const float2 f = __bfloat1622float2(v2[e]);
    out[2 * e] = f.x;
    out[2 * e + 1] = f.y;
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
    float wa[8];
    float wb[8];
    unpack8(__ldcs(w0 + c), wa);
    unpack8(__ldcs(w1 + c), wb);
#pragma unroll
    for (int i = 0; i < M; ++i) {
      float xf[8];
      unpack8(__ldg(reinterpret_cast<const uint4*>(x + i * k) + c), xf);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
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
        *out = beta == 0.0f ? acc[r][i] : acc[r][i] + beta * *out;
      }
    }
  }
}

void launch(const bf16* w, const bf16* x, int64_t m, int64_t n, int64_t k, float* y, float beta, cudaStream_t stream) {
  const int64_t rows_per_block = kGemvWarps * kGemvRowsPerWarp;
  const auto blocks = static_cast<unsigned>((n + rows_per_block - 1) / rows_per_block);
  const int threads = kGemvWarps * 32;
  switch (m) {
    case 1: gemv_kernel<1><<<blocks, threads, 0, stream>>>(w, x, n, k, y, beta); break;
    case 2: gemv_kernel<2><<<blocks, threads, 0, stream>>>(w, x, n, k, y, beta); break;
    case 3: gemv_kernel<3><<<blocks, threads, 0, stream>>>(w, x, n, k, y, beta); break;
    case 4: gemv_kernel<4><<<blocks, threads, 0, stream>>>(w, x, n, k, y, beta); break;
    case 5: gemv_kernel<5><<<blocks, threads, 0, stream>>>(w, x, n, k, y, beta); break;
    case 6: gemv_kernel<6><<<blocks, threads, 0, stream>>>(w, x, n, k, y, beta); break;
    case 7: gemv_kernel<7><<<blocks, threads, 0, stream>>>(w, x, n, k, y, beta); break;
    default: gemv_kernel<8><<<blocks, threads, 0, stream>>>(w, x, n, k, y, beta); break;
  }
  KILN_CUDA_CHECK_LAUNCH("gemv_kernel");
}

void check_shape(int64_t m, int64_t k) {
  if (!gemv_supports(m, k)) {
    throw Error("kiln-gemv: m=" + std::to_string(m) + " k=" + std::to_string(k) + " is not supported (m <= 8, k % 8 == 0)");
  }
}

}  // namespace

bool gemv_supports(int64_t m, int64_t k) { return m >= 1 && m <= kGemvMaxRows && k % 8 == 0; }

void gemv_bf16(const bf16* w, const bf16* x, int64_t m, int64_t n, int64_t k, float* y, float beta, cudaStream_t stream) {
  check_shape(m, k);
  launch(w, x, m, n, k, y, beta, stream);
}

}  // namespace kiln::cuda
