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
    for (int split : cuda::gemv_splits(fp8)) cases.push_back(FusionCase{fp8, split});
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

TEST(CudaGemvFusion, RefusesWhatItCannotRun) {
  SKIP_WITHOUT_GPU();
  EXPECT_FALSE(cuda::gemv_supports(cuda::kGemvNormMaxRows + 1, 1024, false, true));
  EXPECT_FALSE(cuda::gemv_supports(4, 16384, false, true));  // normed rows beyond the shared memory
  EXPECT_TRUE(cuda::gemv_supports(4, 4096, false, true));
  cuda::GemvIn in;
  cuda::GemvOut out;
  EXPECT_THROW(cuda::gemv(nullptr, false, 1, 64, 64, 1.0f, in, out, 1, nullptr), Error);  // no input, no output
  DeviceBuffer buffer(64 * 64 * 2, "weights, input and output");
  in.x = buffer.get();
  out.y = buffer.get<float>();
  EXPECT_THROW(cuda::gemv(buffer.get(), false, 1, 64, 64, 1.0f, in, out, 16, nullptr), Error);  // split 16 is E4M3's
  EXPECT_THROW(cuda::gemv(buffer.get(), true, 1, 64, 64, 1.0f, in, out, 32, nullptr), Error);
}

}  // namespace
}  // namespace kiln::test
