// kiln-gemv's fusions (gemv.h) against the unfused kernel sequence on the same inputs: the RMSNorm
// of the input rows (bf16, or quantized to E4M3), the SiLU·mul of (gate, up) row pairs, and the
// k-split variants, for every row count the fusion takes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
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

// GemvOut::sums / GemvIn::sums: an E4M3 GEMV adding onto a residual leaves each row's sum of squares
// in one piece a 16-row tile (every piece written: tiles of a ragged last block, a ragged last tile,
// one row's deep-prefetch and ring kernels at k = 4096 and 4608), and the next GEMV normalises that
// residual from them as it would from its own pass over the rows, and from them only (four times
// the sums halve its input, and so its output).
TEST(CudaGemvFusion, NormSumsCarryTheNormFromOneGemvToTheNext) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(47);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t n = 300;
  const auto e4m3 = [&](size_t size, float spread) {
    std::vector<float> f(size);
    for (float& v : f) v = spread * normal(rng);
    std::vector<uint8_t> q(size);
    quantize_fp8(f.data(), size, 1.0f, q.data());
    return q;
  };
  // hidden 1040: 65 tiles, so split 1 (8 tiles a block) leaves 7 tiles of its last block past the
  // rows; 1032: the last tile holds 8 rows (only the pieces are checked: no GEMV takes k = 1032).
  struct Shape {
    int64_t hidden, k;
  };
  for (const Shape shape : {Shape{1040, 512}, Shape{1032, 512}, Shape{1040, 4096}, Shape{1040, 4608}}) {
    const int64_t hidden = shape.hidden, k = shape.k;
    const int64_t count = cuda::gemv_norm_sums(hidden);
    ASSERT_EQ(count, 65);
    const auto w_residual = e4m3(static_cast<size_t>(hidden * k), 20.0f);
    const auto x = e4m3(static_cast<size_t>(cuda::kGemvNormMaxRows * k), 100.0f);
    std::vector<float> residual(static_cast<size_t>(cuda::kGemvNormMaxRows * hidden));
    for (float& v : residual) v = 3.0f * normal(rng);
    const bool next_gemv = hidden % 16 == 0;
    const auto w_next = e4m3(static_cast<size_t>(n * hidden), 20.0f);
    std::vector<float> gamma(static_cast<size_t>(hidden));
    for (float& v : gamma) v = 1.0f + 0.2f * normal(rng);
    const DeviceBuffer w_residual_d = to_device(w_residual), x_d = to_device(x), w_next_d = to_device(w_next),
                       g_d = to_device(gamma);
    const float scale = 1.0f / 20.0f / 100.0f / static_cast<float>(k / 8), in_scale = 4.0f / 448.0f;
    for (int split : cuda::gemv_splits(true)) {
      for (int64_t m = 1; m <= cuda::kGemvNormMaxRows; ++m) {
        SCOPED_TRACE("hidden " + std::to_string(hidden) + " k " + std::to_string(k) + " split " +
                     std::to_string(split) + " m " + std::to_string(m));
        ASSERT_TRUE(cuda::gemv_writes_norm_sums(m, true, split));
        DeviceBuffer h_d = to_device(std::vector<float>(residual.begin(), residual.begin() + m * hidden));
        DeviceBuffer sums_d = to_device(std::vector<float>(static_cast<size_t>(m * count), std::nanf("")));
        cuda::GemvIn in;
        in.x = x_d.get();
        cuda::GemvOut out;
        out.y = h_d.get<float>();
        out.beta = 1.0f;
        out.sums = sums_d.get<float>();
        cuda::gemv(w_residual_d.get(), true, m, hidden, k, scale, in, out, split, nullptr);
        const auto h = to_host<float>(h_d, static_cast<size_t>(m * hidden));
        auto sums = to_host<float>(sums_d, static_cast<size_t>(m * count));
        for (int64_t i = 0; i < m; ++i) {
          for (int64_t t = 0; t < count; ++t) {
            double want = 0;
            for (int64_t r = 16 * t; r < std::min(16 * (t + 1), hidden); ++r) {
              want += static_cast<double>(h[i * hidden + r]) * h[i * hidden + r];
            }
            const float got = sums[static_cast<size_t>(i * count + t)];
            ASSERT_FALSE(std::isnan(got)) << "row " << i << " tile " << t << " has no piece";
            EXPECT_NEAR(got, want, 1e-5 * want + 1e-6) << "row " << i << " tile " << t;
          }
        }
        if (!next_gemv) continue;
        // The next GEMV on the normed residual: from the sums, from its own pass over h, and from
        // four times the sums.
        const auto next = [&](const std::vector<float>* with_sums) {
          const DeviceBuffer given_d = to_device(with_sums ? *with_sums : std::vector<float>(1, 0.0f));
          cuda::GemvIn normed;
          normed.h = h_d.get<float>();
          normed.gamma = g_d.get<float>();
          normed.eps = 1e-5f;
          normed.scale = in_scale;
          normed.sums = with_sums ? given_d.get<float>() : nullptr;
          normed.sum_count = with_sums ? count : 0;
          DeviceBuffer y_d(static_cast<size_t>(m * n) * 4, "y");
          KILN_CUDA_CHECK(cudaMemset(y_d.get(), 0xff, y_d.bytes()));
          cuda::GemvOut to_y;
          to_y.y = y_d.get<float>();
          cuda::gemv(w_next_d.get(), true, m, n, hidden, in_scale / 20.0f, normed, to_y, split, nullptr);
          return to_host<float>(y_d, static_cast<size_t>(m * n));
        };
        const auto own = next(nullptr);
        // The two sum the squares in another order: a few inputs may round to the neighbouring E4M3
        // value (as the fused norm against the norm kernel above).
        EXPECT_LT(relative_norm_error(next(&sums), own), 2e-2);
        for (float& v : sums) v *= 4.0f;
        std::vector<float> half(own);
        for (float& v : half) v *= 0.5f;
        EXPECT_LT(relative_norm_error(next(&sums), half), 2e-2) << "the sums were not what normalised h";
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
  DeviceBuffer buffer(64 * 64 * 2, "weights, input and output");
  in.x = buffer.get();
  out.y = buffer.get<float>();
  EXPECT_THROW(cuda::gemv(buffer.get(), false, 1, 64, 64, 1.0f, in, out, 16, nullptr), Error);  // split 16 is E4M3's
  EXPECT_THROW(cuda::gemv(buffer.get(), true, 1, 64, 64, 1.0f, in, out, 32, nullptr), Error);
  // Norm sums: written by an E4M3 GEMV of at most kGemvNormMaxRows rows with y, not the wgmma kernel;
  // read only with a normed input and a piece count.
  EXPECT_FALSE(cuda::gemv_writes_norm_sums(1, false, 1));
  EXPECT_FALSE(cuda::gemv_writes_norm_sums(cuda::kGemvNormMaxRows + 1, true, 1));
  EXPECT_FALSE(cuda::gemv_writes_norm_sums(1, true, cuda::kGemvWgmmaSplit));
  DeviceBuffer sums(64 * 4, "sums");
  cuda::GemvOut with_sums = out;
  with_sums.sums = sums.get<float>();
  expect_refused([&] { cuda::gemv(buffer.get(), false, 1, 64, 64, 1.0f, in, with_sums, 1, nullptr); }, "norm sums (GemvOut::sums)");
  expect_refused([&] { cuda::gemv(buffer.get(), true, 5, 16, 64, 1.0f, in, with_sums, 1, nullptr); }, "m=5");
  cuda::GemvIn sums_without_h = in;
  sums_without_h.sums = sums.get<float>();
  sums_without_h.sum_count = 4;
  expect_refused([&] { cuda::gemv(buffer.get(), true, 1, 64, 64, 1.0f, sums_without_h, out, 1, nullptr); }, "no h");
  cuda::GemvIn normed;
  normed.h = buffer.get<float>();
  expect_refused([&] { cuda::gemv(buffer.get(), true, 1, 16, 64, 1.0f, normed, with_sums, 1, nullptr); }, "normed input");
  normed.sums = sums.get<float>();
  normed.sum_count = 5;
  expect_refused([&] { cuda::gemv(buffer.get(), true, 1, 16, 64, 1.0f, normed, out, 1, nullptr); }, "sum_count 4");
}

}  // namespace
}  // namespace kiln::test
