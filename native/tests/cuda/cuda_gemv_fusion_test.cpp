// kiln-gemv's fusions (gemv.h) against the unfused kernel sequence on the same inputs: the RMSNorm
// of the input rows (bf16, or quantized to E4M3), the SiLU·mul of (gate, up) row pairs, the
// residual-norm epilogue, and the k-split variants, for every row count the fusion takes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
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

// One launch of the o / down form with the residual-norm epilogue into x_d.
void residual_norm_gemv(const DeviceBuffer& w, bool fp8, int64_t m, int64_t n, int64_t k, float scale,
                        const DeviceBuffer& x, DeviceBuffer& y, const DeviceBuffer& gamma, float norm_scale,
                        DeviceBuffer& x_d, DeviceBuffer& counter, int split, cudaStream_t stream) {
  cuda::GemvIn in;
  in.x = x.get();
  cuda::GemvOut out;
  out.y = y.get<float>();
  out.beta = 1.0f;
  out.norm_x = x_d.get();
  out.norm_gamma = gamma.get<float>();
  out.norm_eps = 1e-5f;
  out.norm_scale = norm_scale;
  out.counter = counter.get<unsigned>();
  cuda::gemv(w.get(), fp8, m, n, k, scale, in, out, split, stream);
}

TEST(CudaGemvFusion, ResidualNormEpilogueMatchesGemvThenNormKernel) {
  SKIP_WITHOUT_GPU();
  for (bool fp8 : {false, true}) {
    for (int split : cuda::kGemvSplits) {
      SCOPED_TRACE(std::string(fp8 ? "fp8" : "bf16") + " split " + std::to_string(split));
      std::mt19937 rng(fp8 ? 47 : 53);
      std::normal_distribution<float> normal(0.0f, 1.0f);
      const int64_t n = 1040, k = 1024;  // n: 65 blocks at split 1, 520 at split 8
      const size_t elem = fp8 ? 1 : 2;
      std::vector<float> wf(static_cast<size_t>(n * k)), xf(static_cast<size_t>(cuda::kGemvMaxRows * k));
      for (float& v : wf) v = normal(rng) * (fp8 ? 20.0f : 0.05f);
      for (float& v : xf) v = normal(rng) * (fp8 ? 50.0f : 1.0f);
      std::vector<uint8_t> w(wf.size() * elem), x(xf.size() * elem);
      if (fp8) {
        quantize_fp8(wf.data(), wf.size(), 1.0f, w.data());
        quantize_fp8(xf.data(), xf.size(), 1.0f, x.data());
      } else {
        encode_from_f32(DType::BF16, wf.data(), w.data(), wf.size());
        encode_from_f32(DType::BF16, xf.data(), x.data(), xf.size());
      }
      std::vector<float> h(static_cast<size_t>(cuda::kGemvMaxRows * n)), gamma(static_cast<size_t>(n));
      for (float& v : h) v = 2.0f * normal(rng);
      for (float& v : gamma) v = 1.0f + 0.2f * normal(rng);
      const float scale = fp8 ? 1.0f / (20.0f * 50.0f * 32.0f) : 1.0f, norm_scale = 4.0f / 448.0f;
      const DeviceBuffer w_d = to_device(w), x_d = to_device(x), g_d = to_device(gamma);
      DeviceBuffer counter(sizeof(unsigned), "counter");
      KILN_CUDA_CHECK(cudaMemset(counter.get(), 0, counter.bytes()));
      for (int64_t m : {1, 3, 8}) {
        SCOPED_TRACE("m " + std::to_string(m));
        // Unfused: plain GEMV adding onto y, then the norm kernel.
        DeviceBuffer y_ref = to_device(h), want(static_cast<size_t>(m * n) * elem, "x reference");
        cuda::GemvIn plain;
        plain.x = x_d.get();
        cuda::GemvOut onto;
        onto.y = y_ref.get<float>();
        onto.beta = 1.0f;
        cuda::gemv(w_d.get(), fp8, m, n, k, scale, plain, onto, split, nullptr);
        if (fp8) cuda::rms_norm_to_fp8(y_ref.get<float>(), nullptr, m, n, g_d.get<float>(), 1e-5f, norm_scale, want.get<cuda::fp8>(), nullptr);
        else cuda::rms_norm_to_bf16(y_ref.get<float>(), nullptr, m, n, g_d.get<float>(), 1e-5f, want.get<cuda::bf16>(), nullptr);
        // Fused, twice (a graph replay relies on the counter coming back to zero).
        for (int launch = 0; launch < 2; ++launch) {
          DeviceBuffer y = to_device(h), got(static_cast<size_t>(m * n) * elem, "x");
          KILN_CUDA_CHECK(cudaMemset(got.get(), 0xff, got.bytes()));  // NaN in bf16 and E4M3: unwritten fails
          residual_norm_gemv(w_d, fp8, m, n, k, scale, x_d, y, g_d, norm_scale, got, counter, split, nullptr);
          // The same kernel arithmetic for y: equal to the bit.
          EXPECT_EQ(to_host<float>(y, static_cast<size_t>(m * n)), to_host<float>(y_ref, static_cast<size_t>(m * n)));
          const auto decode = [&](const DeviceBuffer& d) {
            std::vector<float> out(static_cast<size_t>(m * n));
            const auto bytes = to_host<uint8_t>(d, out.size() * elem);
            for (size_t i = 0; i < out.size(); ++i) {
              out[i] = fp8 ? f8e4m3_to_f32(bytes[i]) : bf16_to_f32(static_cast<uint16_t>(bytes[2 * i] | bytes[2 * i + 1] << 8));
            }
            return out;
          };
          // Sums of squares in another order: a few values may round to the neighbouring bf16 / E4M3.
          EXPECT_LT(relative_norm_error(decode(got), decode(want)), fp8 ? 2e-2 : 2e-3);
          EXPECT_EQ(to_host<unsigned>(counter, 1)[0], 0u);
        }
      }
    }
  }
}

// Not a check: what the epilogue costs next to the separate norm kernel it replaces, per launch on an
// o-projection shape (Llama-3.2-1B: 2048 x 2048, Llama-3.1-8B: 4096 x 4096), m = 1 and 8, printed.
TEST(CudaGemvFusion, ResidualNormEpilogueTiming) {
  SKIP_WITHOUT_GPU();
  cudaStream_t stream = nullptr;
  KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaEvent_t start = nullptr, stop = nullptr;
  KILN_CUDA_CHECK(cudaEventCreate(&start));
  KILN_CUDA_CHECK(cudaEventCreate(&stop));
  for (int64_t hidden : {2048, 4096}) {
    for (bool fp8 : {false, true}) {
      const size_t elem = fp8 ? 1 : 2;
      DeviceBuffer w(static_cast<size_t>(hidden * hidden) * elem, "w"), x(static_cast<size_t>(8 * hidden) * elem, "x");
      DeviceBuffer y(static_cast<size_t>(8 * hidden) * 4, "y"), g(static_cast<size_t>(hidden) * 4, "gamma");
      DeviceBuffer out(static_cast<size_t>(8 * hidden) * elem, "x next"), counter(sizeof(unsigned), "counter");
      KILN_CUDA_CHECK(cudaMemset(w.get(), 0, w.bytes()));
      KILN_CUDA_CHECK(cudaMemset(x.get(), 0, x.bytes()));
      KILN_CUDA_CHECK(cudaMemset(y.get(), 0, y.bytes()));
      KILN_CUDA_CHECK(cudaMemset(g.get(), 0, g.bytes()));
      KILN_CUDA_CHECK(cudaMemset(counter.get(), 0, counter.bytes()));
      for (int64_t m : {1, 8}) {
        const auto time_us = [&](auto&& launch) {
          for (int i = 0; i < 20; ++i) launch();
          constexpr int kIterations = 200;
          KILN_CUDA_CHECK(cudaEventRecord(start, stream));
          for (int i = 0; i < kIterations; ++i) launch();
          KILN_CUDA_CHECK(cudaEventRecord(stop, stream));
          KILN_CUDA_CHECK(cudaEventSynchronize(stop));
          float ms = 0.0f;
          KILN_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
          return 1000.0 * ms / kIterations;
        };
        const double separate = time_us([&] {
          cuda::GemvIn in;
          in.x = x.get();
          cuda::GemvOut o;
          o.y = y.get<float>();
          o.beta = 1.0f;
          cuda::gemv(w.get(), fp8, m, hidden, hidden, 1.0f, in, o, 2, stream);
          if (fp8) cuda::rms_norm_to_fp8(y.get<float>(), nullptr, m, hidden, g.get<float>(), 1e-5f, 1.0f, out.get<cuda::fp8>(), stream);
          else cuda::rms_norm_to_bf16(y.get<float>(), nullptr, m, hidden, g.get<float>(), 1e-5f, out.get<cuda::bf16>(), stream);
        });
        const double fused = time_us([&] {
          residual_norm_gemv(w, fp8, m, hidden, hidden, 1.0f, x, y, g, 1.0f, out, counter, 2, stream);
        });
        std::printf("residual-norm epilogue %s hidden %lld m %lld: GEMV + norm kernel %.2f us, fused %.2f us\n",
                    fp8 ? "fp8" : "bf16", static_cast<long long>(hidden), static_cast<long long>(m), separate, fused);
      }
    }
  }
  KILN_CUDA_CHECK(cudaEventDestroy(start));
  KILN_CUDA_CHECK(cudaEventDestroy(stop));
  KILN_CUDA_CHECK(cudaStreamDestroy(stream));
}

TEST(CudaGemvFusion, RefusesWhatItCannotRun) {
  SKIP_WITHOUT_GPU();
  EXPECT_FALSE(cuda::gemv_supports(cuda::kGemvNormMaxRows + 1, 1024, false, true));
  EXPECT_FALSE(cuda::gemv_supports(4, 16384, false, true));  // normed rows beyond the shared memory
  EXPECT_TRUE(cuda::gemv_supports(4, 4096, false, true));
  cuda::GemvIn in;
  cuda::GemvOut out;
  EXPECT_THROW(cuda::gemv(nullptr, false, 1, 64, 64, 1.0f, in, out, 1, nullptr), Error);  // no input, no output
  in.x = &in;
  out.y = &out.beta;
  out.norm_x = &out;
  EXPECT_THROW(cuda::gemv(nullptr, false, 1, 64, 64, 1.0f, in, out, 1, nullptr), Error);  // normed output, no counter
}

}  // namespace
}  // namespace kiln::test
