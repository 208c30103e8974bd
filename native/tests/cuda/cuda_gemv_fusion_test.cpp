// kiln-gemv's fusions (gemv.h) against the unfused kernel sequence on the same inputs: the RMSNorm
// of the input rows (bf16, or quantized to E4M3), the SiLU·mul of (gate, up) row pairs, and the
// k-split variants, for every row count the fusion takes.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backend/cuda/gemv.h"
#include "backend/cuda/kernels.h"
#include "compiler/precision.h"
#include "core/dtype.h"
#include "device_helpers.h"

namespace kiln::test {
namespace {

using cuda::DeviceBuffer;

struct FusionCase {
  bool fp8;
  int split;
};

TEST(CudaGemvFusion, NormedInputAndSiluOutputMatchTheSeparateKernels) {
  SKIP_WITHOUT_GPU();
  std::vector<FusionCase> cases;
  for (bool fp8 : {false, true}) {
    for (int split : cuda::kGemvSplits) cases.push_back(FusionCase{fp8, split});
  }
  for (const FusionCase fc : cases) {
    SCOPED_TRACE(std::string(fc.fp8 ? "fp8" : "bf16") + " split " + std::to_string(fc.split));
    std::mt19937 rng(fc.fp8 ? 41 : 43);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const int64_t n = 2 * 150, k = 1024;  // n: 150 (gate, up) pairs, not a multiple of a block's rows
    const size_t elem = fc.fp8 ? 1 : 2;
    std::vector<uint8_t> w(static_cast<size_t>(n * k) * elem);
    {
      std::vector<float> wf(static_cast<size_t>(n * k));
      for (float& v : wf) v = normal(rng) * (fc.fp8 ? 20.0f : 0.05f);
      if (fc.fp8) quantize_fp8(wf.data(), wf.size(), 1.0f, w.data());
      else encode_from_f32(DType::BF16, wf.data(), w.data(), wf.size());
    }
    std::vector<float> h(static_cast<size_t>(cuda::kGemvNormMaxRows * k)), gamma(static_cast<size_t>(k));
    for (float& v : h) v = 3.0f * normal(rng);
    for (float& v : gamma) v = 1.0f + 0.2f * normal(rng);
    const float in_scale = 4.0f / 448.0f, w_scale = 1.0f / 20.0f, act_scale = 0.05f;
    const float scale = fc.fp8 ? w_scale * in_scale : 1.0f;
    const DeviceBuffer w_d = to_device(w), h_d = to_device(h), g_d = to_device(gamma);
    for (int64_t m = 1; m <= cuda::kGemvNormMaxRows; ++m) {
      SCOPED_TRACE("m " + std::to_string(m));
      // Unfused: norm kernel -> x, plain GEMV -> fp32 y, SiLU·mul kernel -> act.
      DeviceBuffer x_d(static_cast<size_t>(m * k) * elem, "x");
      if (fc.fp8) cuda::rms_norm_to_fp8(h_d.get<float>(), nullptr, m, k, g_d.get<float>(), 1e-5f, in_scale, x_d.get<cuda::fp8>(), nullptr);
      else cuda::rms_norm_to_bf16(h_d.get<float>(), nullptr, m, k, g_d.get<float>(), 1e-5f, x_d.get<cuda::bf16>(), nullptr);
      DeviceBuffer y_d(static_cast<size_t>(m * n) * 4, "y");
      cuda::GemvIn plain;
      plain.x = x_d.get();
      cuda::GemvOut to_y;
      to_y.y = y_d.get<float>();
      cuda::gemv(w_d.get(), fc.fp8, m, n, k, scale, plain, to_y, 1, nullptr);
      DeviceBuffer want_d(static_cast<size_t>(m * n / 2) * elem, "act reference");
      if (fc.fp8) cuda::silu_mul_to_fp8(y_d.get<float>(), m, n / 2, act_scale, want_d.get<cuda::fp8>(), nullptr);
      else cuda::silu_mul_to_bf16(y_d.get<float>(), m, n / 2, want_d.get<cuda::bf16>(), nullptr);
      const auto want_y = to_host<float>(y_d, static_cast<size_t>(m * n));

      // Fused: one GEMV reading h, writing act; and normed input with a plain fp32 output.
      cuda::GemvIn normed;
      normed.h = h_d.get<float>();
      normed.gamma = g_d.get<float>();
      normed.eps = 1e-5f;
      normed.scale = in_scale;
      DeviceBuffer act_d(static_cast<size_t>(m * n / 2) * elem, "act");
      KILN_CUDA_CHECK(cudaMemset(act_d.get(), 0xff, act_d.bytes()));  // NaN in bf16 and E4M3: unwritten fails
      cuda::GemvOut to_act;
      to_act.act = act_d.get();
      to_act.act_scale = act_scale;
      cuda::gemv(w_d.get(), fc.fp8, m, n, k, scale, normed, to_act, fc.split, nullptr);
      DeviceBuffer y2_d(static_cast<size_t>(m * n) * 4, "y fused");
      KILN_CUDA_CHECK(cudaMemset(y2_d.get(), 0xff, y2_d.bytes()));
      cuda::GemvOut to_y2;
      to_y2.y = y2_d.get<float>();
      cuda::gemv(w_d.get(), fc.fp8, m, n, k, scale, normed, to_y2, fc.split, nullptr);

      const auto decode = [&](const DeviceBuffer& d) {
        std::vector<float> out(static_cast<size_t>(m * n / 2));
        const auto bytes = to_host<uint8_t>(d, out.size() * elem);
        for (size_t i = 0; i < out.size(); ++i) {
          out[i] = fc.fp8 ? f8e4m3_to_f32(bytes[i]) * act_scale
                          : bf16_to_f32(static_cast<uint16_t>(bytes[2 * i] | bytes[2 * i + 1] << 8));
        }
        return out;
      };
      // The fused norm sums squares in another order: a few inputs may round to the neighbouring
      // E4M3 / bf16 value, so the outputs agree to rounding, not bit for bit.
      EXPECT_LT(relative_norm_error(to_host<float>(y2_d, want_y.size()), want_y), fc.fp8 ? 2e-2 : 2e-3);
      EXPECT_LT(relative_norm_error(decode(act_d), decode(want_d)), fc.fp8 ? 4e-2 : 5e-3);
    }
  }
}

TEST(CudaGemvFusion, NormedOutputMatchesTheNormKernelAfterThePlainGemv) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(47);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t n = 1000, k = 512;  // n: a partial last tile at every split
  std::vector<uint8_t> w(static_cast<size_t>(n * k));
  {
    std::vector<float> wf(w.size());
    for (float& v : wf) v = normal(rng) * 20.0f;
    quantize_fp8(wf.data(), wf.size(), 1.0f, w.data());
  }
  std::vector<uint8_t> x(static_cast<size_t>(cuda::kGemvMaxRows * k));
  {
    std::vector<float> xf(x.size());
    for (float& v : xf) v = normal(rng) * 100.0f;
    quantize_fp8(xf.data(), xf.size(), 1.0f, x.data());
  }
  std::vector<float> h(static_cast<size_t>(cuda::kGemvMaxRows * n)), gamma(static_cast<size_t>(n));
  for (float& v : h) v = 3.0f * normal(rng);
  for (float& v : gamma) v = 1.0f + 0.2f * normal(rng);
  const float scale = 1e-4f, normed_scale = 4.0f / 448.0f;
  const DeviceBuffer w_d = to_device(w), x_d = to_device(x), g_d = to_device(gamma);
  DeviceBuffer arrivals_d(4, "arrivals");
  KILN_CUDA_CHECK(cudaMemset(arrivals_d.get(), 0, 4));
  for (int split : cuda::kGemvSplits) {
    for (int64_t m = 1; m <= cuda::kGemvMaxRows; ++m) {
      SCOPED_TRACE("split " + std::to_string(split) + " m " + std::to_string(m));
      const size_t count = static_cast<size_t>(m * n);
      // Unfused: the plain GEMV onto h, then the norm kernel.
      const std::vector<float> h0(h.begin(), h.begin() + static_cast<std::ptrdiff_t>(count));
      DeviceBuffer want_y_d = to_device(h0);
      cuda::GemvIn in;
      in.x = x_d.get();
      cuda::GemvOut plain;
      plain.y = want_y_d.get<float>();
      plain.beta = 1.0f;
      cuda::gemv(w_d.get(), true, m, n, k, scale, in, plain, split, nullptr);
      DeviceBuffer want_d(count, "normed reference");
      cuda::rms_norm_to_fp8(want_y_d.get<float>(), nullptr, m, n, g_d.get<float>(), 1e-5f, normed_scale,
                            want_d.get<cuda::fp8>(), nullptr);
      const auto want_y = to_host<float>(want_y_d, count);
      const auto want = to_host<uint8_t>(want_d, count);
      // Twice: the second launch finds its last block only if the first left the counter at zero.
      for (int launch = 0; launch < 2; ++launch) {
        DeviceBuffer y_d = to_device(h0);
        DeviceBuffer normed_d(count, "normed");
        KILN_CUDA_CHECK(cudaMemset(normed_d.get(), 0xff, count));  // NaN in E4M3: unwritten fails
        cuda::GemvOut fused;
        fused.y = y_d.get<float>();
        fused.beta = 1.0f;
        fused.normed = normed_d.get<cuda::fp8>();
        fused.normed_gamma = g_d.get<float>();
        fused.normed_eps = 1e-5f;
        fused.normed_scale = normed_scale;
        fused.arrivals = arrivals_d.get<int32_t>();
        cuda::gemv(w_d.get(), true, m, n, k, scale, in, fused, split, nullptr, launch == 0);
        EXPECT_EQ(to_host<float>(y_d, count), want_y);  // the same kernel body: y bit for bit
        const auto got = to_host<uint8_t>(normed_d, count);
        std::vector<float> got_f(count), want_f(count);
        for (size_t i = 0; i < count; ++i) {
          got_f[i] = f8e4m3_to_f32(got[i]);
          want_f[i] = f8e4m3_to_f32(want[i]);
        }
        // The sums of squares are added in another order: a few values may round to a neighbour.
        EXPECT_LT(relative_norm_error(got_f, want_f), 1e-2);
        EXPECT_EQ(to_host<int32_t>(arrivals_d, 1)[0], 0);
      }
    }
  }
}

TEST(CudaGemvFusion, RefusesWhatItCannotRun) {
  SKIP_WITHOUT_GPU();
  EXPECT_FALSE(cuda::gemv_supports(cuda::kGemvNormMaxRows + 1, 1024, false, true));
  EXPECT_FALSE(cuda::gemv_supports(4, 16384, false, true));  // normed rows beyond the shared memory
  EXPECT_TRUE(cuda::gemv_supports(4, 4096, false, true));
  cuda::GemvIn in;
  cuda::GemvOut out;
  EXPECT_THROW(cuda::gemv(nullptr, false, 1, 64, 64, 1.0f, in, out, 1, nullptr), Error);  // no input, no output
  DeviceBuffer y_d(64 * 4, "y"), normed_d(64, "normed");
  in.x = y_d.get();
  out.y = y_d.get<float>();
  out.normed = normed_d.get<cuda::fp8>();
  // A normed output without its arrivals counter, and on bf16 weights.
  EXPECT_THROW(cuda::gemv(y_d.get(), true, 1, 64, 64, 1.0f, in, out, 1, nullptr), Error);
  DeviceBuffer arrivals_d(4, "arrivals");
  out.arrivals = arrivals_d.get<int32_t>();
  EXPECT_THROW(cuda::gemv(y_d.get(), false, 1, 64, 64, 1.0f, in, out, 1, nullptr), Error);
}

}  // namespace
}  // namespace kiln::test
