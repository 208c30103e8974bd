// kiln-skinny (skinny_gemm.h) against a double-precision CPU reference on the Llama-3.2-1B and
// Llama-3-8B projection shapes and odd ones: m 9 / 17 / 33 / 64, every tile and split that fits
// the workspace, beta 0 (the output NaN before, so an element left unwritten fails) and 1, bf16 and
// E4M3; the SiLU·mul output on the gate_up shapes; repeated runs bit-identical; TunedGemm's dispatch
// to it; and an autotuned engine that races it (gate_up with the SiLU·mul credited).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/gemm.h"
#include "backend/cuda/generate.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/model.h"
#include "backend/cuda/skinny_gemm.h"
#include "compiler/build.h"
#include "compiler/precision.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "cuda_engine_builds.h"
#include "device_helpers.h"
#include "engine/engine.h"
#include "tiny_checkpoint.h"

namespace kiln::test {
namespace {

using cuda::DeviceBuffer;

struct Shape {
  const char* name;
  int64_t n, k;
};

// n 1001: the last tile is partial for every tile size; n 40: one partial tile; k 1040 and 272 are
// not whole 128-byte pipeline steps in either dtype.
constexpr Shape kShapes[] = {{"1B qkv", 3072, 2048},     {"1B o", 2048, 2048},  {"1B gate_up", 16384, 2048},
                             {"1B down", 2048, 8192},    {"8B qkv", 6144, 4096}, {"8B o", 4096, 4096},
                             {"8B gate_up", 28672, 4096}, {"8B down", 4096, 14336}, {"odd n", 1001, 1040},
                             {"one partial tile", 40, 272}};
constexpr int64_t kRowCounts[] = {9, 17, 33, 64};

// Random operands as the GEMM reads them (bf16 bits or E4M3 bytes), the scale that keeps fp8
// outputs O(1), and the float64 reference scale · x · wᵀ for the first kSkinnyMaxRows rows of x.
struct Problem {
  bool fp8 = false;
  int64_t n = 0, k = 0;
  float scale = 1.0f;
  std::vector<uint8_t> w, x;
  std::vector<double> product;  // [kSkinnyMaxRows, n]

  Problem(const Shape& s, bool use_fp8, std::mt19937& rng) : fp8(use_fp8), n(s.n), k(s.k) {
    // Uniform values of standard deviation `spread` from a xorshift: the 8B gate_up alone is 117M
    // weights, which std::normal_distribution would take seconds to draw.
    uint32_t state = static_cast<uint32_t>(rng()) | 1u;
    const auto operand = [&](int64_t count, float spread) {
      std::vector<float> f(static_cast<size_t>(count));
      for (float& v : f) {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        v = (static_cast<float>(state) * 0x1p-32f * 2.0f - 1.0f) * spread * 1.7320508f;
      }
      std::vector<uint8_t> out(f.size() * (fp8 ? 1 : 2));
      if (fp8) quantize_fp8(f.data(), f.size(), 1.0f, out.data());
      else encode_from_f32(DType::BF16, f.data(), out.data(), f.size());
      return out;
    };
    w = operand(n * k, fp8 ? 30.0f : 1.0f);
    x = operand(cuda::kSkinnyMaxRows * k, fp8 ? 100.0f : 1.0f);
    scale = fp8 ? static_cast<float>(1.0 / (30.0 * 100.0 * std::sqrt(static_cast<double>(k)))) : 1.0f;
    const std::vector<float> xf = decoded(x.data(), cuda::kSkinnyMaxRows * k);
    product.assign(static_cast<size_t>(cuda::kSkinnyMaxRows * n), 0.0);
    ThreadPool pool;
    constexpr int64_t kRowsPerChunk = 64;
    pool.run(static_cast<int>((n + kRowsPerChunk - 1) / kRowsPerChunk), pool.size(), [&](int chunk) {
      for (int64_t j = chunk * kRowsPerChunk; j < std::min(n, (chunk + 1) * kRowsPerChunk); ++j) {
        const std::vector<float> row = decoded(w.data() + j * k * (fp8 ? 1 : 2), k);
        for (int64_t i = 0; i < cuda::kSkinnyMaxRows; ++i) {
          double s = 0;
          for (int64_t c = 0; c < k; ++c) s += static_cast<double>(xf[static_cast<size_t>(i * k + c)]) * row[static_cast<size_t>(c)];
          product[static_cast<size_t>(i * n + j)] = s * scale;
        }
      }
    });
  }

  std::vector<float> decoded(const uint8_t* bytes, int64_t count) const {
    std::vector<float> out(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) {
      if (fp8) {
        out[static_cast<size_t>(i)] = f8e4m3_to_f32(bytes[i]);
      } else {
        uint16_t bits = 0;
        std::memcpy(&bits, bytes + 2 * i, 2);
        out[static_cast<size_t>(i)] = bf16_to_f32(bits);
      }
    }
    return out;
  }

  // scale · x · wᵀ + beta · y0 for the first m rows.
  std::vector<float> want(int64_t m, float beta, const std::vector<float>& y0) const {
    std::vector<float> out(static_cast<size_t>(m * n));
    for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>(product[i] + beta * y0[i]);
    return out;
  }
};

// bf16 products are exact in fp32 and the MMA adds them in fp32, so the error is fp32 summation's:
// about sqrt(k) roundings of 2^-24 relative to a random-signed sum (an H100 measured 1.55e-5 at
// k = 14336 with one split, the longest chain). The E4M3 MMA aligns its 32 products to the largest
// before adding (about 14 bits kept), as cuBLASLt's fp8 GEMMs do.
double tolerance(bool fp8, int64_t k) { return fp8 ? 1e-3 : 4.0 * std::sqrt(static_cast<double>(k)) * 0x1p-24; }

std::vector<float> run_skinny(const cuda::LtContext& context, const Problem& p, const DeviceBuffer& w,
                              const DeviceBuffer& x, int64_t m, const std::vector<float>& start, float beta, int tile,
                              int splits) {
  DeviceBuffer y = to_device(start);
  cuda::skinny_gemm(w.get(), x.get(), p.fp8, m, p.n, p.k, p.scale, cuda::GemvOut{y.get<float>(), beta}, tile, splits,
                    context.skinny_workspace(), nullptr);
  return to_host<float>(y, start.size());
}

// A buffer of 0xff bytes: NaN in fp32, bf16 and E4M3, so an element a kernel leaves unwritten fails.
DeviceBuffer nan_buffer(size_t bytes) {
  DeviceBuffer b(bytes, "test output");
  KILN_CUDA_CHECK(cudaMemset(b.get(), 0xff, bytes));
  return b;
}

size_t act_bytes(const Problem& p, int64_t m) { return static_cast<size_t>(m * (p.n / 2)) * (p.fp8 ? 1 : 2); }

// The SiLU·mul output (GemvOut::act) of m rows.
std::vector<uint8_t> run_skinny_silu(const cuda::LtContext& context, const Problem& p, const DeviceBuffer& w,
                                     const DeviceBuffer& x, int64_t m, float act_scale, int tile, int splits) {
  // A row more than m, which must stay 0xff: the zero padding rows of the MMA are not stored.
  DeviceBuffer act = nan_buffer(act_bytes(p, m + 1));
  cuda::GemvOut out;
  out.act = act.get();
  out.act_scale = act_scale;
  cuda::skinny_gemm(w.get(), x.get(), p.fp8, m, p.n, p.k, p.scale, out, tile, splits, context.skinny_workspace(),
                    nullptr);
  std::vector<uint8_t> got = to_host<uint8_t>(act, act_bytes(p, m + 1));
  EXPECT_TRUE(std::all_of(got.begin() + static_cast<int64_t>(act_bytes(p, m)), got.end(),
                          [](uint8_t b) { return b == 0xff; }))
      << "row " << m << " written";
  got.resize(act_bytes(p, m));
  return got;
}

// What the unfused step makes of the same GEMM: its fp32 output, then silu_mul_to_bf16 / _fp8.
std::vector<uint8_t> run_skinny_then_silu(const cuda::LtContext& context, const Problem& p, const DeviceBuffer& w,
                                          const DeviceBuffer& x, int64_t m, float act_scale, int tile, int splits) {
  DeviceBuffer y = nan_buffer(static_cast<size_t>(m * p.n) * sizeof(float));
  cuda::skinny_gemm(w.get(), x.get(), p.fp8, m, p.n, p.k, p.scale, cuda::GemvOut{y.get<float>()}, tile, splits,
                    context.skinny_workspace(), nullptr);
  DeviceBuffer act = nan_buffer(act_bytes(p, m));
  if (p.fp8) cuda::silu_mul_to_fp8(y.get<float>(), m, p.n / 2, act_scale, act.get<cuda::fp8>(), nullptr);
  else cuda::silu_mul_to_bf16(y.get<float>(), m, p.n / 2, act.get<cuda::bf16>(), nullptr);
  return to_host<uint8_t>(act, act_bytes(p, m));
}

// Bytes that differ (EXPECT_EQ on the vectors would print megabytes of them).
int64_t differing(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  if (a.size() != b.size()) return -1;
  int64_t count = 0;
  for (size_t i = 0; i < a.size(); ++i) count += a[i] != b[i];
  return count;
}

// The act bytes as values: bf16, or E4M3 times act_scale (NaN stays NaN).
std::vector<float> act_values(const std::vector<uint8_t>& bytes, bool fp8, float act_scale) {
  std::vector<float> out(bytes.size() / (fp8 ? 1 : 2));
  for (size_t i = 0; i < out.size(); ++i) {
    if (fp8) {
      out[i] = f8e4m3_to_f32(bytes[i]) * act_scale;
    } else {
      uint16_t bits = 0;
      std::memcpy(&bits, bytes.data() + 2 * i, 2);
      out[i] = bf16_to_f32(bits);
    }
  }
  return out;
}

// silu(gate) · up of the float64 product's column pairs (2j, 2j + 1) for m rows; for E4M3 saturated
// at ±448 · act_scale, as the kernel's store saturates.
std::vector<float> want_act(const Problem& p, int64_t m, float act_scale) {
  const int64_t half = p.n / 2;
  std::vector<float> out(static_cast<size_t>(m * half));
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < half; ++j) {
      const double g = p.product[static_cast<size_t>(i * p.n + 2 * j)];
      const double u = p.product[static_cast<size_t>(i * p.n + 2 * j + 1)];
      double v = g / (1.0 + std::exp(-g)) * u;
      if (p.fp8) v = std::clamp(v, -448.0 * act_scale, 448.0 * act_scale);
      out[static_cast<size_t>(i * half + j)] = static_cast<float>(v);
    }
  }
  return out;
}

// Rounding to the output dtype moves a value by at most half an ulp: 2^-9 of it in bf16 (8-bit
// significand), 2^-4 in E4M3 (3-bit mantissa; subnormals by at most 2^-10 · act_scale, nothing
// in the norm of O(1) values), so the norm-wise error stays below that. On top comes the GEMM's own
// error (tolerance()), which silu(g) · u passes on about unchanged in norm: 2^-8 leaves bf16 a
// rounding's worth of room for it (its 2e-5 at most is far below), E4M3 gets four times it.
double act_tolerance(bool fp8, int64_t k) { return fp8 ? 0x1p-4 + 4.0 * tolerance(true, k) : 0x1p-8; }

TEST(CudaSkinnyGemm, ComputesTheScaledProductPlusBetaYForEveryTileAndSplitOnModelShapes) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(31);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  cuda::LtContext context;
  for (bool fp8 : {false, true}) {
    for (const Shape& shape : kShapes) {
      const Problem p(shape, fp8, rng);
      const DeviceBuffer w = to_device(p.w), x = to_device(p.x);
      std::vector<float> y0(static_cast<size_t>(cuda::kSkinnyMaxRows * p.n));
      for (float& v : y0) v = normal(rng);
      int cases = 0;
      for (int64_t m : kRowCounts) {
        for (int tile : cuda::kSkinnyTiles) {
          for (int splits : cuda::kSkinnySplits) {
            if (!cuda::skinny_supports(m, p.n, p.k, fp8, tile, splits, context.skinny_workspace())) continue;
            const float beta = (cases++ % 2) ? 1.0f : 0.0f;
            SCOPED_TRACE(std::string(shape.name) + (fp8 ? " fp8" : " bf16") + " m " + std::to_string(m) + " tile " +
                         std::to_string(tile) + " splits " + std::to_string(splits) + " beta " + std::to_string(beta));
            std::vector<float> start(y0.begin(), y0.begin() + m * p.n);
            if (beta == 0.0f) std::fill(start.begin(), start.end(), std::nanf(""));  // beta 0 must not read y
            const auto got = run_skinny(context, p, w, x, m, start, beta, tile, splits);
            EXPECT_LT(relative_norm_error(got, p.want(m, beta, y0)), tolerance(fp8, p.k));
          }
        }
      }
      // Every model shape runs split 1 and 2 at least, at m = 64 too (the workspace holds them).
      EXPECT_GE(cases, 4 * 2 * 2) << shape.name;
    }
  }
}

// The (gate, up)-interleaved gate_up shapes of the 1B and 8B models, and small even n with a partial
// last tile for every tile size (n / 2 odd: act rows start at odd elements).
constexpr Shape kGateUpShapes[] = {{"1B gate_up", 16384, 2048}, {"8B gate_up", 28672, 4096},
                                   {"even n", 1002, 1040}, {"one partial tile", 40, 272}};

TEST(CudaSkinnyGemm, WritesTheSiLUMulOfGateUpPairsAsTheSiLUKernelWouldForEveryTileAndSplit) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(43);
  cuda::LtContext context;
  for (bool fp8 : {false, true}) {
    // fp8: products are O(1) (Problem's scale), so SiLU·mul values past 4 saturate, as a
    // calibrated down projection's input scale would clip outliers.
    const float act_scale = fp8 ? 4.0f / 448.0f : 1.0f;
    for (const Shape& shape : kGateUpShapes) {
      const Problem p(shape, fp8, rng);
      const DeviceBuffer w = to_device(p.w), x = to_device(p.x);
      int cases = 0;
      for (int64_t m : kRowCounts) {
        const std::vector<float> want = want_act(p, m, act_scale);
        for (int tile : cuda::kSkinnyTiles) {
          for (int splits : cuda::kSkinnySplits) {
            if (!cuda::skinny_supports(m, p.n, p.k, fp8, tile, splits, context.skinny_workspace(), true)) continue;
            ++cases;
            SCOPED_TRACE(std::string(shape.name) + (fp8 ? " fp8" : " bf16") + " m " + std::to_string(m) + " tile " +
                         std::to_string(tile) + " splits " + std::to_string(splits));
            const auto fused = run_skinny_silu(context, p, w, x, m, act_scale, tile, splits);
            EXPECT_LT(relative_norm_error(act_values(fused, fp8, act_scale), want), act_tolerance(fp8, p.k));
            const auto unfused = run_skinny_then_silu(context, p, w, x, m, act_scale, tile, splits);
            EXPECT_EQ(differing(fused, unfused), 0) << "bytes where silu_mul_to_* of the plain output differs";
            EXPECT_EQ(differing(run_skinny_silu(context, p, w, x, m, act_scale, tile, splits), fused), 0)
                << "bytes where a second run differs";
          }
        }
      }
      EXPECT_GE(cases, 4 * 2 * 2) << shape.name;
    }
  }
}

// The m = 64 bucket's entry of a table that chose kiln-skinny (tile 64, 3 splits); cuBLASLt's first
// heuristic algorithm as the entry's algo, as the autotuner always stores one.
cuda::GemmChoice skinny_choice(const cuda::LtContext& context, const Problem& p) {
  cuda::LtGemm probe(context, p.n, p.k);
  cuda::GemmChoice choice;
  choice.tactic = cuda::GemmTactic::KilnSkinny;
  choice.algo = probe.heuristic(64, 1).front().algo;
  choice.skinny_tile = 64;
  choice.skinny_splits = 3;
  return choice;
}

TEST(CudaSkinnyGemm, TunedGemmRunsTheSiLUMulOutputOfItsSkinnyChoice) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(47);
  cuda::LtContext context;
  const Problem p(kGateUpShapes[2], false, rng);
  const DeviceBuffer w = to_device(p.w), x = to_device(p.x);
  const cuda::GemmChoice choice = skinny_choice(context, p);
  cuda::TunedGemm gemm(context, p.n, p.k, {{64, choice}});
  DeviceBuffer act = nan_buffer(act_bytes(p, 33));
  cuda::GemvOut out;
  out.act = act.get();
  gemm.run_skinny(w.get(), x.get(), 33, p.scale, out, nullptr);
  EXPECT_EQ(differing(to_host<uint8_t>(act, act_bytes(p, 33)), run_skinny_silu(context, p, w, x, 33, 1.0f, 64, 3)), 0);
  EXPECT_THROW(gemm.run_skinny(w.get(), x.get(), 65, p.scale, out, nullptr), Error);  // past its rows: cuBLASLt's
}

TEST(CudaSkinnyGemm, RepeatedRunsAreBitIdenticalAndLeaveTheSplitCountersZero) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(37);
  cuda::LtContext context;
  const cuda::SkinnyWorkspace workspace = context.skinny_workspace();
  for (bool fp8 : {false, true}) {
    const Problem p(Shape{"8B down", 4096, 14336}, fp8, rng);
    const DeviceBuffer w = to_device(p.w), x = to_device(p.x);
    const std::vector<float> start(static_cast<size_t>(64 * p.n), std::nanf(""));
    for (int splits : {1, 8}) {
      SCOPED_TRACE(std::string(fp8 ? "fp8" : "bf16") + " splits " + std::to_string(splits));
      const auto first = run_skinny(context, p, w, x, 64, start, 0.0f, 64, splits);
      for (int again = 0; again < 3; ++again) {
        const auto next = run_skinny(context, p, w, x, 64, start, 0.0f, 64, splits);
        EXPECT_EQ(std::memcmp(first.data(), next.data(), first.size() * sizeof(float)), 0) << "run " << again + 1;
      }
      std::vector<int32_t> counters(static_cast<size_t>(workspace.counter_count));
      KILN_CUDA_CHECK(cudaMemcpy(counters.data(), workspace.counters, counters.size() * sizeof(int32_t),
                                 cudaMemcpyDeviceToHost));
      EXPECT_EQ(std::count(counters.begin(), counters.end(), 0), workspace.counter_count);
    }
  }
}

TEST(CudaSkinnyGemm, RefusesWhatItDoesNotRun) {
  SKIP_WITHOUT_GPU();
  cuda::LtContext context;
  const auto ws = context.skinny_workspace();
  DeviceBuffer w(4096 * 1024, "w"), x(65 * 1024, "x"), y(65 * 4096 * 4, "y");
  const auto run = [&](int64_t m, int64_t n, int64_t k, bool fp8, int tile, int splits) {
    cuda::skinny_gemm(w.get(), x.get(), fp8, m, n, k, 1.0f, cuda::GemvOut{y.get<float>()}, tile, splits, ws, nullptr);
  };
  EXPECT_THROW(run(65, 256, 512, false, 64, 1), Error);  // more rows than kSkinnyMaxRows
  EXPECT_THROW(run(16, 256, 1028, false, 64, 1), Error);  // k % 8 != 0 (bf16)
  EXPECT_THROW(run(16, 256, 1032, true, 64, 1), Error);  // k % 16 != 0 (E4M3)
  EXPECT_THROW(run(16, 256, 512, false, 96, 1), Error);  // not a tile size
  EXPECT_THROW(run(16, 256, 512, false, 64, 9), Error);  // more splits than 8
  EXPECT_FALSE(cuda::skinny_supports(64, 131072, 512, false, 128, 8, ws));  // partials past the workspace
  EXPECT_THROW(cuda::skinny_gemm(static_cast<uint8_t*>(w.get()) + 2, x.get(), false, 16, 256, 512, 1.0f,
                                 cuda::GemvOut{y.get<float>()}, 64, 1, ws, nullptr),
               Error);  // weights not 16-byte aligned
  const auto run_silu = [&](int64_t n, float beta) {
    cuda::GemvOut out;
    out.act = y.get();
    out.beta = beta;
    cuda::skinny_gemm(w.get(), x.get(), false, 16, n, 512, 1.0f, out, 64, 2, ws, nullptr);
  };
  EXPECT_NO_THROW(run_silu(256, 0.0f));
  EXPECT_THROW(run_silu(255, 0.0f), Error);  // odd n: the last gate has no up
  EXPECT_THROW(run_silu(256, 1.0f), Error);  // the SiLU·mul output accumulates onto nothing
  EXPECT_TRUE(cuda::skinny_supports(16, 255, 512, false, 64, 2, ws));
  EXPECT_FALSE(cuda::skinny_supports(16, 255, 512, false, 64, 2, ws, true));
  EXPECT_THROW(cuda::skinny_gemm(w.get(), x.get(), false, 16, 256, 512, 1.0f, cuda::GemvOut{}, 64, 1, ws, nullptr),
               Error);  // no output
}

TEST(CudaSkinnyGemm, TunedGemmRunsTheSkinnyChoiceUpToItsRowsAndCublasLtBeyond) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(41);
  cuda::LtContext context;
  const Problem p(Shape{"odd n", 1001, 1040}, false, rng);
  const DeviceBuffer w = to_device(p.w), x = to_device(p.x);
  const cuda::GemmChoice choice = skinny_choice(context, p);
  cuda::TunedGemm gemm(context, p.n, p.k, {{64, choice}});
  EXPECT_TRUE(gemm.skinny_at(9));
  EXPECT_TRUE(gemm.skinny_at(64));
  EXPECT_FALSE(gemm.skinny_at(65));  // past the kernel's rows: the bucket's cuBLASLt algorithm
  const std::vector<float> start(static_cast<size_t>(33 * p.n), std::nanf(""));
  DeviceBuffer y = to_device(start);
  gemm.run(w.get(), x.get(), 33, y.get<float>(), 0.0f, nullptr);
  const auto direct = run_skinny(context, p, w, x, 33, start, 0.0f, 64, 3);
  const auto tuned = to_host<float>(y, start.size());
  EXPECT_EQ(std::memcmp(tuned.data(), direct.data(), tuned.size() * sizeof(float)), 0);

  cuda::GemmChoice bad = choice;
  bad.skinny_splits = 9;
  EXPECT_THROW(cuda::TunedGemm(context, p.n, p.k, {{64, bad}}), Error);  // a corrupt table entry
}

TEST(CudaSkinnyGemm, AnAutotunedEngineRacesItAtSixtyFourRowsAndDecodesABatchAsAlone) {
  SKIP_WITHOUT_GPU();
  const TinySpec spec = cuda_tiny_spec();
  BuildOptions o = cuda_build_options(write_tiny_checkpoint("cuda_skinny_engine", spec));
  o.autotune = true;
  o.max_batch = 16;  // buckets 1, 8, 64: batches of 9..16 run the m = 64 choice
  build_cuda_engine(o);
  const auto engine = Engine::load(o.out_path);
  int raced = 0, won = 0, gate_up_raced = 0;
  for (const auto& entry : engine->header().at("autotune").at("entries")) {
    const bool sixty_four = entry.at("bucket").get<int64_t>() == 64;
    EXPECT_EQ(entry.contains("kiln_skinny_us"), sixty_four) << entry.at("bucket");
    if (sixty_four) raced += !entry.at("kiln_skinny_us").empty();
    won += entry.at("tactic") == "kiln-skinny";
    // gate_up (its own shape here) races with the SiLU·mul in every bucket (kiln-gemv at 1 and 8,
    // kiln-skinny at 64 write it themselves): cuBLASLt is credited the SiLU kernel's time.
    const bool gate_up = entry.at("n") == 2 * spec.intermediate && entry.at("k") == spec.hidden;
    EXPECT_EQ(entry.contains("silu_us"), gate_up) << entry.at("n") << " bucket " << entry.at("bucket");
    if (!gate_up) continue;
    ++gate_up_raced;
    EXPECT_TRUE(entry.contains("note"));
    const double silu_us = entry.at("silu_us").get<double>(), us = entry.at("us").get<double>();
    EXPECT_GT(silu_us, 0.0);
    constexpr double kRounding = 0.016;  // three values, each rounded to 0.01
    if (entry.at("tactic") == "cublaslt") {
      EXPECT_NEAR(us, entry.at("cublaslt_us").get<double>() + silu_us, kRounding);
    } else {
      double fastest = 1e30;
      for (const char* kernel : {"kiln_gemv_us", "kiln_skinny_us"}) {
        if (!entry.contains(kernel)) continue;
        for (const auto& [name, t] : entry.at(kernel).items()) fastest = std::min(fastest, t.get<double>());
      }
      EXPECT_DOUBLE_EQ(us, fastest);
      EXPECT_LE(us, entry.at("cublaslt_us").get<double>() + silu_us + kRounding);
    }
  }
  EXPECT_GT(raced, 0);
  EXPECT_EQ(gate_up_raced, 3);
  RecordProperty("kiln_skinny_wins", won);  // the decode below runs skinny GEMMs only where it won

  cuda::CudaModel model(engine);
  constexpr int64_t kSequences = 12, kSteps = 16;
  std::vector<std::vector<int32_t>> prompts, alone, tables;
  for (int64_t s = 0; s < kSequences; ++s) {
    std::vector<int32_t> prompt;
    for (int64_t i = 0; i <= s % 5; ++i) prompt.push_back(static_cast<int32_t>((s * 13 + i * 7 + 1) % spec.vocab));
    prompts.push_back(prompt);
    alone.push_back(cuda::generate_greedy(model, prompt, kSteps).tokens);
    tables.push_back({static_cast<int32_t>(2 * s), static_cast<int32_t>(2 * s + 1)});
  }
  auto cache = model.new_cache(2 * kSequences, 16);
  ForwardBatch prefill;
  for (int64_t s = 0; s < kSequences; ++s) {
    prefill.add(prompts[s].data(), static_cast<int64_t>(prompts[s].size()), 0, tables[s].data(), true);
  }
  std::vector<int32_t> next(kSequences);
  model.forward(prefill, cache, next.data());
  std::vector<std::vector<int32_t>> got(kSequences);
  for (int64_t step = 1; step <= kSteps; ++step) {
    for (int64_t s = 0; s < kSequences; ++s) got[s].push_back(next[s]);
    if (step == kSteps) break;
    ForwardBatch batch;
    const std::vector<int32_t> tokens = next;
    for (int64_t s = 0; s < kSequences; ++s) {
      batch.add(&tokens[s], 1, static_cast<int64_t>(prompts[s].size()) + step - 1, tables[s].data(), true);
    }
    model.forward(batch, cache, next.data());  // decode steps of 12 rows: a graph of the m = 64 choices
  }
  for (int64_t s = 0; s < kSequences; ++s) EXPECT_EQ(got[s], alone[s]) << "sequence " << s;
}

}  // namespace
}  // namespace kiln::test
