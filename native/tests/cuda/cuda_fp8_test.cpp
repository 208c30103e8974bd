// fp8 E4M3 on the GPU: the fp8 GEMV and cuBLASLt's fp8 GEMMs against a double reference over the
// decoded operands, and the kernels that quantize GEMM inputs against the CPU's E4M3 conversion.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

#include "backend/cuda/gemm.h"
#include "backend/cuda/gemv.h"
#include "backend/cuda/kernels.h"
#include "compiler/precision.h"
#include "core/dtype.h"
#include "core/error.h"
#include "device_helpers.h"

namespace kiln::test {
namespace {

using cuda::DeviceBuffer;
using cuda::fp8;

std::vector<uint8_t> random_fp8(size_t count, float spread, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, spread);
  std::vector<float> f(count);
  for (float& v : f) v = normal(rng);
  std::vector<uint8_t> q(count);
  quantize_fp8(f.data(), count, 1.0f, q.data());
  return q;
}

// want[i, j] = scale · Σ x[i, c] w[j, c] + beta · y0[i, j] over the decoded E4M3 values, in double.
std::vector<float> scaled_product(const std::vector<uint8_t>& w, const std::vector<uint8_t>& x, int64_t m, int64_t n,
                                  int64_t k, float scale, float beta, const std::vector<float>& y0) {
  std::vector<float> want(static_cast<size_t>(m * n));
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t c = 0; c < k; ++c) {
        s += static_cast<double>(f8e4m3_to_f32(x[static_cast<size_t>(i * k + c)])) * f8e4m3_to_f32(w[static_cast<size_t>(j * k + c)]);
      }
      want[static_cast<size_t>(i * n + j)] = static_cast<float>(scale * s + beta * y0[static_cast<size_t>(i * n + j)]);
    }
  }
  return want;
}

// k = 1040: 65 chunks of 16, a ragged last step; k = 4096: one row at split 8 takes the deep-prefetch
// kernel, which stages its input even when asked not to (gemv_fp8.cu); k = 5136 and 14336 (8B down):
// its slices are longer than the prefetched steps, so the weights stream through the shared-memory
// ring (5136: 321 chunks, the ring's last step ragged and zero-filled).
class CudaFp8Gemv : public ::testing::TestWithParam<int64_t> {};

TEST_P(CudaFp8Gemv, ComputesTheScaledProductOfE4m3OperandsForUpToEightRows) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(21);
  const int64_t n = 301, k = GetParam();  // odd n: a warp's second row is missing at the end
  const auto w = random_fp8(static_cast<size_t>(n * k), 30.0f, rng);
  const auto x = random_fp8(static_cast<size_t>(cuda::kGemvMaxRows * k), 100.0f, rng);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> y0(static_cast<size_t>(cuda::kGemvMaxRows * n));
  for (float& v : y0) v = normal(rng);
  const DeviceBuffer w_d = to_device(w), x_d = to_device(x);
  const float scale = 3.0e-5f;
  for (int64_t m = 1; m <= cuda::kGemvMaxRows; ++m) {
    for (float beta : {0.0f, 1.0f}) {
      SCOPED_TRACE("m " + std::to_string(m) + " beta " + std::to_string(beta));
      const auto want = scaled_product(w, x, m, n, k, scale, beta, y0);
      std::vector<float> start(y0.begin(), y0.begin() + m * n);
      if (beta == 0.0f) std::fill(start.begin(), start.end(), std::nanf(""));  // beta 0 must not read y
      for (int split : cuda::gemv_splits(true)) {
        DeviceBuffer y_d = to_device(start);
        cuda::gemv_fp8(w_d.get<fp8>(), x_d.get<fp8>(), m, n, k, scale, y_d.get<float>(), beta, nullptr, split);
        EXPECT_LT(relative_norm_error(to_host<float>(y_d, want.size()), want), 1e-5) << "split " << split;
        // Without the input staging (the autotuner races both): each warp widens its own chunks. (One
        // row at split 8 and k = 4096 stages anyway: the deep kernel; KILN_CUDA_GEMV_DEEP_STAGE=0 in
        // test/gpu/device_check.sh runs it unstaged.)
        const auto unstaged = gemv_result(w_d.get(), x_d.get(), true, m, n, k, scale, beta, start, split, false, false);
        EXPECT_LT(relative_norm_error(unstaged, want), 1e-5) << "unstaged split " << split;
        // The residual read before the PDL wait (GemvOut::y_settled): the same sums.
        const auto settled = gemv_result(w_d.get(), x_d.get(), true, m, n, k, scale, beta, start, split, true, true);
        EXPECT_LT(relative_norm_error(settled, want), 1e-5) << "settled split " << split;
      }
    }
  }
  EXPECT_THROW(cuda::gemv_fp8(w_d.get<fp8>(), x_d.get<fp8>(), 1, n, 1032, 1.0f, nullptr, 0.0f, nullptr), Error);
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaFp8Gemv, ::testing::Values(int64_t{1040}, int64_t{4096}, int64_t{5136}, int64_t{14336}));

// The wgmma kernel (split kGemvWgmmaSplit: up to 8 rows, Hopper's E4M3 tensor-core instruction)
// against the same double reference, on a ragged last tile (n = 302: four full tiles of 64 and 46
// rows), k from one 512-byte group pair to the 8B down projection, at the row counts whose staged
// rows fit (m·k + (8 - m)·16 <= 48 KB); its SiLU·mul output against the tensor-core mma kernel's;
// and what it refuses.
TEST(CudaFp8Gemv, TheWgmmaKernelComputesTheScaledProductOfUpToEightRowsAndItsSiluMul) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(29);
  const int64_t n = 302;
  const int split = cuda::kGemvWgmmaSplit;
  const std::vector<std::pair<int64_t, std::vector<int64_t>>> shapes = {
      {512, {1, 2, 8}}, {4096, {1, 3, 8}}, {14336, {1, 3}}};
  for (const auto& [k, row_counts] : shapes) {
    const auto w = random_fp8(static_cast<size_t>(n * k), 30.0f, rng);
    const auto x = random_fp8(static_cast<size_t>(8 * k), 100.0f, rng);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> y0(static_cast<size_t>(8 * n));
    for (float& v : y0) v = normal(rng);
    const DeviceBuffer w_d = to_device(w), x_d = to_device(x);
    const float scale = 3.0e-5f;
    for (int64_t m : row_counts) {
      SCOPED_TRACE("k " + std::to_string(k) + " m " + std::to_string(m));
      ASSERT_TRUE(cuda::gemv_wgmma_supports(m, k));
      for (float beta : {0.0f, 1.0f}) {
        SCOPED_TRACE("beta " + std::to_string(beta));
        const auto want = scaled_product(w, x, m, n, k, scale, beta, y0);
        std::vector<float> start(y0.begin(), y0.begin() + m * n);
        if (beta == 0.0f) std::fill(start.begin(), start.end(), std::nanf(""));  // beta 0 must not read y
        // E4M3 wgmma sums 256 products at a time with ~14 bits kept (gemv_fp8_wgmma.cu), then in fp32.
        const auto got = gemv_result(w_d.get(), x_d.get(), true, m, n, k, scale, beta, start, split, true, false);
        const double error = relative_norm_error(got, want);
        std::printf("wgmma GEMV k %lld m %lld beta %g: relative error %.2e\n", static_cast<long long>(k),
                    static_cast<long long>(m), beta, error);
        EXPECT_LT(error, 1e-3);
        const auto settled = gemv_result(w_d.get(), x_d.get(), true, m, n, k, scale, beta, start, split, true, true);
        EXPECT_LT(relative_norm_error(settled, want), 1e-3) << "settled";
      }
      // SiLU·mul of the (gate, up) row pairs, quantized to E4M3: the same bytes as the mma kernel's
      // but where a product sits on a rounding boundary (sums in another order).
      const float act_scale = 0.05f;
      const auto act_of = [&](int with_split) {
        const size_t count = static_cast<size_t>(m * (n / 2));
        DeviceBuffer act_d(count, "act");
        KILN_CUDA_CHECK(cudaMemset(act_d.get(), 0xff, act_d.bytes()));  // E4M3 NaN: an unwritten byte fails
        cuda::GemvIn in;
        in.x = x_d.get();
        cuda::GemvOut out;
        out.act = act_d.get();
        out.act_scale = act_scale;
        cuda::gemv(w_d.get(), true, m, n, k, scale, in, out, with_split, nullptr);
        std::vector<float> decoded(count);
        const auto bytes = to_host<uint8_t>(act_d, count);
        for (size_t i = 0; i < count; ++i) decoded[i] = f8e4m3_to_f32(bytes[i]) * act_scale;
        return decoded;
      };
      EXPECT_LT(relative_norm_error(act_of(split), act_of(8)), 4e-2);
    }
  }
  EXPECT_FALSE(cuda::gemv_wgmma_supports(9, 512));
  EXPECT_FALSE(cuda::gemv_wgmma_supports(4, 14336));
  EXPECT_FALSE(cuda::gemv_wgmma_supports(1, 1040));
  EXPECT_FALSE(cuda::gemv_wgmma_supports(1, 4096, true));
  const auto x = random_fp8(static_cast<size_t>(8 * 14336), 1.0f, rng);
  const DeviceBuffer buffer = to_device(std::vector<uint8_t>(static_cast<size_t>(64 * 14336), 0)), x_d = to_device(x);
  DeviceBuffer y_d(static_cast<size_t>(8 * 64) * 4, "y");
  expect_refused([&] { cuda::gemv_fp8(buffer.get<fp8>(), x_d.get<fp8>(), 4, 64, 14336, 1.0f, y_d.get<float>(), 0.0f, nullptr, split); },
          "m=4 k=14336");
  expect_refused([&] { cuda::gemv_fp8(buffer.get<fp8>(), x_d.get<fp8>(), 1, 64, 1040, 1.0f, y_d.get<float>(), 0.0f, nullptr, split); },
          "k=1040");
  expect_refused([&] {
    cuda::gemv_bf16(buffer.get<cuda::bf16>(), x_d.get<cuda::bf16>(), 1, 64, 512, y_d.get<float>(), 0.0f, nullptr, split);
  }, "bf16");
}

TEST(CudaFp8, EveryCublasLtFp8AlgorithmComputesTheScaledProduct) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(23);
  const int64_t n = 320, k = 512;
  const auto w = random_fp8(static_cast<size_t>(n * k), 30.0f, rng);
  cuda::LtContext context;
  cuda::LtGemm gemm(context, n, k, CUDA_R_8F_E4M3);
  const DeviceBuffer w_d = to_device(w);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const float scale = 2.0e-5f;
  for (int64_t m : {1, 5, 64}) {
    const auto x = random_fp8(static_cast<size_t>(m * k), 100.0f, rng);
    std::vector<float> y0(static_cast<size_t>(m * n));
    for (float& v : y0) v = normal(rng);
    const auto want = scaled_product(w, x, m, n, k, scale, 1.0f, y0);
    const DeviceBuffer x_d = to_device(x);
    const auto proposals = gemm.heuristic(m, 8);
    ASSERT_FALSE(proposals.empty());
    for (const auto& p : proposals) {
      SCOPED_TRACE("m " + std::to_string(m) + " " + cuda::algo_config(p.algo).dump());
      DeviceBuffer y_d = to_device(y0);
      gemm.run(p.algo, w_d.get(), x_d.get(), m, y_d.get<float>(), 1.0f, nullptr, scale);
      // Hopper's fp8 MMA accumulates in reduced precision between fp32 promotions.
      EXPECT_LT(relative_norm_error(to_host<float>(y_d, want.size()), want), 1e-3);
    }
  }
}

// Decodes E4M3 bytes times the scale they were quantized with.
std::vector<float> dequantize(const std::vector<uint8_t>& q, float scale) {
  std::vector<float> out(q.size());
  for (size_t i = 0; i < q.size(); ++i) out[i] = f8e4m3_to_f32(q[i]) * scale;
  return out;
}

TEST(CudaFp8, NormAndSiluMulQuantizeTheirOutputWithTheInputScaleAndSaturate) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(29);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  const int64_t rows = 3, hidden = 2048, inter = 1000;
  std::vector<float> h(static_cast<size_t>(rows * hidden)), gamma(static_cast<size_t>(hidden));
  for (float& v : h) v = normal(rng);
  for (float& v : gamma) v = 1.0f + 0.1f * normal(rng);
  h[5] = 400.0f;  // one outlier the scale cannot hold: it must saturate to 448, not overflow to NaN
  std::vector<float> want(h.size());
  for (int64_t r = 0; r < rows; ++r) {
    double sq = 0;
    for (int64_t i = 0; i < hidden; ++i) sq += static_cast<double>(h[static_cast<size_t>(r * hidden + i)]) * h[static_cast<size_t>(r * hidden + i)];
    const double inv = 1.0 / std::sqrt(sq / hidden + 1e-5);
    for (int64_t i = 0; i < hidden; ++i) {
      want[static_cast<size_t>(r * hidden + i)] = static_cast<float>(h[static_cast<size_t>(r * hidden + i)] * inv * gamma[static_cast<size_t>(i)]);
    }
  }
  const float norm_scale = 3.0f / 448.0f;  // amax 3: the outlier row's largest value lies beyond it
  const DeviceBuffer h_d = to_device(h), g_d = to_device(gamma);
  DeviceBuffer y_d(h.size(), "norm output");
  KILN_CUDA_CHECK(cudaMemset(y_d.get(), 0xff, y_d.bytes()));  // 0xff is an E4M3 NaN: unwritten elements fail
  cuda::rms_norm_to_fp8(h_d.get<float>(), nullptr, rows, hidden, g_d.get<float>(), 1e-5f, norm_scale, y_d.get<fp8>(), nullptr);
  const auto y = to_host<uint8_t>(y_d, h.size());
  EXPECT_EQ(f8e4m3_to_f32(y[5]), 448.0f);
  std::vector<float> clipped = want;
  for (float& v : clipped) v = std::clamp(v, -448.0f * norm_scale, 448.0f * norm_scale);
  // E4M3 rounds to 3 mantissa bits: at most 1/16 relative per element.
  EXPECT_LT(relative_norm_error(dequantize(y, norm_scale), clipped), 0.04);

  std::vector<float> gate_up(static_cast<size_t>(rows * 2 * inter));
  for (float& v : gate_up) v = normal(rng);
  std::vector<float> act_want(static_cast<size_t>(rows * inter));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < inter; ++i) {
      const double g = gate_up[static_cast<size_t>(r * 2 * inter + 2 * i)];
      act_want[static_cast<size_t>(r * inter + i)] = static_cast<float>(g / (1 + std::exp(-g)) * gate_up[static_cast<size_t>(r * 2 * inter + 2 * i + 1)]);
    }
  }
  float amax = 0;
  for (float v : act_want) amax = std::max(amax, std::fabs(v));
  const float act_scale = fp8_scale_for(amax);
  const DeviceBuffer gu_d = to_device(gate_up);
  DeviceBuffer act_d(act_want.size(), "silu output");
  KILN_CUDA_CHECK(cudaMemset(act_d.get(), 0xff, act_d.bytes()));
  cuda::silu_mul_to_fp8(gu_d.get<float>(), rows, inter, act_scale, act_d.get<fp8>(), nullptr);
  EXPECT_LT(relative_norm_error(dequantize(to_host<uint8_t>(act_d, act_want.size()), act_scale), act_want), 0.04);
}

}  // namespace
}  // namespace kiln::test
