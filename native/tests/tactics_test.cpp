// Every registered GEMM tactic computes the same product as a plain double loop, for every weight
// dtype, for shapes with row and column tails, on one thread and on the pool.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <cstring>
#include <set>

#include "backend/cpu/gemm.h"
#include "backend/cpu/simd.h"
#include "compiler/precision.h"
#include "compiler/tactics.h"

namespace kiln {
namespace {

struct Weights {
  std::vector<uint8_t> bytes;
  std::vector<float> values;  // what the bytes decode to, before row scales
  std::vector<float> row_scale;
};

Weights make_weights(DType dtype, int64_t n, int64_t k, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> w(static_cast<size_t>(n * k));
  for (float& v : w) v = normal(rng);
  Weights out;
  out.values.resize(w.size());
  out.bytes.resize(w.size() * dtype_size(dtype));
  if (dtype == DType::I8) {
    out.row_scale.resize(static_cast<size_t>(n));
    quantize_int8_rows(w.data(), n, k, reinterpret_cast<int8_t*>(out.bytes.data()), out.row_scale.data());
    for (size_t i = 0; i < w.size(); ++i) out.values[i] = static_cast<float>(static_cast<int8_t>(out.bytes[i]));
  } else if (dtype == DType::F8E4M3) {
    quantize_fp8(w.data(), w.size(), 1.0f, out.bytes.data());
    decode_to_f32(dtype, out.bytes.data(), out.values.data(), w.size());
  } else {
    encode_from_f32(dtype, w.data(), out.bytes.data(), w.size());
    decode_to_f32(dtype, out.bytes.data(), out.values.data(), w.size());
  }
  return out;
}

TEST(Tactics, RegistryNamesAreUniqueAndTheDefaultExists) {
  const auto& registry = TacticRegistry::instance();
  std::set<std::string> names;
  for (const auto& t : registry.gemm()) EXPECT_TRUE(names.insert(t.name).second) << t.name;
  EXPECT_GE(registry.gemm().size(), 8u);
  EXPECT_EQ(registry.default_gemm().name, kDefaultCpuGemmTactic);
  EXPECT_EQ(registry.default_gemm().layout, WeightLayout::Row);
  EXPECT_EQ(registry.find_gemm("no.such.tactic"), nullptr);
}

TEST(Tactics, PanelTacticsAreOfferedOnlyForShapesTheirLayoutHolds) {
  const auto& registry = TacticRegistry::instance();
  for (const GemmTactic* t : registry.gemm_candidates(30, 20)) EXPECT_EQ(t->layout, WeightLayout::Row) << t->name;
  bool panel = false;
  for (const GemmTactic* t : registry.gemm_candidates(64, 64)) panel = panel || t->layout != WeightLayout::Row;
  EXPECT_TRUE(panel);
}

TEST(Tactics, EveryTacticMatchesTheReferenceProductForEveryDtype) {
  ThreadPool pool(2);
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const std::pair<int64_t, int64_t> shapes[] = {{64, 64}, {37, 29}, {16, 200}, {8, 8}};
  for (DType dtype : {DType::F32, DType::BF16, DType::F16, DType::I8, DType::F8E4M3}) {
    for (const auto& [n, k] : shapes) {
      const Weights w = make_weights(dtype, n, k, rng);
      std::vector<float> bias(static_cast<size_t>(n));
      for (float& b : bias) b = normal(rng);
      for (int64_t m : {1, 3, 8}) {
        std::vector<float> x(static_cast<size_t>(m * k));
        for (float& v : x) v = normal(rng);
        for (const GemmTactic* t : TacticRegistry::instance().gemm_candidates(n, k)) {
          SCOPED_TRACE(std::string(dtype_name(dtype)) + " " + t->name + " n=" + std::to_string(n) + " k=" +
                       std::to_string(k) + " m=" + std::to_string(m));
          const std::vector<uint8_t> packed = pack_weight(t->layout, w.bytes, n, k, dtype_size(dtype));
          std::vector<float> y(static_cast<size_t>(m * n), NAN);
          GemmProblem p;
          p.x = x.data();
          p.m = m;
          p.k = k;
          p.w = packed.data();
          p.w_dtype = dtype;
          p.layout = t->layout;
          p.n = n;
          p.row_scale = w.row_scale.empty() ? nullptr : w.row_scale.data();
          p.scale = 0.5f;
          p.bias = bias.data();
          p.y = y.data();
          t->run(p, pool, t->threads);
          for (int64_t i = 0; i < m; ++i) {
            for (int64_t j = 0; j < n; ++j) {
              double want = 0;
              for (int64_t e = 0; e < k; ++e) {
                want += static_cast<double>(x[static_cast<size_t>(i * k + e)]) * w.values[static_cast<size_t>(j * k + e)];
              }
              want *= 0.5 * (w.row_scale.empty() ? 1.0 : w.row_scale[static_cast<size_t>(j)]);
              want += bias[static_cast<size_t>(j)];
              ASSERT_NEAR(y[static_cast<size_t>(i * n + j)], want, 1e-4 * (std::fabs(want) + std::sqrt(k)));
            }
          }
        }
      }
    }
  }
}

TEST(Tactics, VectorFp8DecodeMatchesTheScalarDecodeForAllCodes) {
  for (int base = 0; base < 256; base += 8) {
    uint8_t codes[8];
    for (int i = 0; i < 8; ++i) codes[i] = static_cast<uint8_t>(base + i);
    float lanes[8];
    const cpu::F8x decoded = cpu::WeightF8E4M3::load(codes);
    std::memcpy(lanes, &decoded, sizeof lanes);
    for (int i = 0; i < 8; ++i) {
      if ((codes[i] & 0x7f) == 0x7f) continue;  // NaN: never produced by quantization
      EXPECT_EQ(lanes[i], f8e4m3_to_f32(codes[i])) << "code " << int{codes[i]};
    }
  }
}

}  // namespace
}  // namespace kiln
