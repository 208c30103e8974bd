// The CUDA backend on the device: kernels against the CPU backend on random inputs (every output
// element written), cuBLASLt GEMMs against a double reference, and the whole model against the
// double-precision reference forward of tiny checkpoints of every architecture the backend runs.
// Every test skips itself where no GPU is visible (the CPU CI machine).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <random>

#include "architectures.h"
#include "backend/cuda/check.h"
#include "backend/cuda/device.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/gemv.h"
#include "backend/cuda/generate.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/model.h"
#include "compiler/build.h"
#include "compiler/precision.h"
#include "cuda_engine_builds.h"
#include "device_helpers.h"
#include "core/error.h"
#include "engine/engine.h"
#include "engine/reader.h"
#include "runtime/step_model.h"
#include "tiny_checkpoint.h"

namespace kiln::test {
namespace {

using cuda::bf16;
using cuda::DeviceBuffer;

std::vector<float> bf16_to_floats(const std::vector<uint16_t>& bits) {
  std::vector<float> out(bits.size());
  for (size_t i = 0; i < bits.size(); ++i) out[i] = bf16_to_f32(bits[i]);
  return out;
}

struct AttentionCase {
  int64_t heads, kv_heads, head_dim;
  bool fp8_cache = false;  // E4M3 keys / values holding k / 0.5 and v / 2 (kernels.h KvCacheArgs)
};

// One cache element as the CUDA cache stores it (bf16, or e4m3 of v / scale) at dst; returns the
// value an attention kernel reads back.
float store_cache_element(bool fp8, float scale, float v, uint8_t* dst) {
  if (fp8) {
    *dst = f32_to_f8e4m3(v / scale);
    return f8e4m3_to_f32(*dst) * scale;
  }
  const uint16_t b = f32_to_bf16(v);
  std::memcpy(dst, &b, 2);
  return bf16_to_f32(b);
}

// The fp8-cache cases check the E4M3 read path against the CPU attention over the dequantized cache.
TEST(CudaKernels, PagedAttentionMatchesTheCpuBackendOnAMixedBatch) {
  SKIP_WITHOUT_GPU();
  for (const AttentionCase& ac : {AttentionCase{8, 2, 64}, AttentionCase{32, 8, 128}, AttentionCase{4, 4, 32},
                                  AttentionCase{8, 2, 64, true}, AttentionCase{32, 8, 128, true},
                                  AttentionCase{4, 4, 32, true}}) {
    SCOPED_TRACE("heads " + std::to_string(ac.heads) + "/" + std::to_string(ac.kv_heads) + " dim " +
                 std::to_string(ac.head_dim) + (ac.fp8_cache ? " fp8 cache" : ""));
    std::mt19937 rng(static_cast<uint32_t>(ac.heads * 131 + ac.head_dim));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const int64_t P = 16;
    const int64_t pages = 64;
    const int64_t kv_dim = ac.kv_heads * ac.head_dim;
    const int64_t q_dim = ac.heads * ac.head_dim;
    // A prefill chunk after a cached prefix, two decode tokens and a fresh prompt; page ids shuffled
    // so block tables really redirect.
    struct Slice { int64_t start, n; };
    const std::vector<Slice> slices{{20, 37}, {100, 1}, {5, 1}, {0, 70}};
    std::vector<int32_t> ids(pages);
    for (int64_t i = 0; i < pages; ++i) ids[static_cast<size_t>(i)] = static_cast<int32_t>(i);
    std::shuffle(ids.begin(), ids.end(), rng);
    const int64_t stride = 8;
    std::vector<int32_t> tables(slices.size() * stride);
    std::vector<const int32_t*> table_ptrs;
    for (size_t s = 0; s < slices.size(); ++s) {
      for (int64_t p = 0; p < stride; ++p) tables[s * stride + static_cast<size_t>(p)] = ids[s * stride + static_cast<size_t>(p)];
    }
    for (size_t s = 0; s < slices.size(); ++s) table_ptrs.push_back(tables.data() + s * stride);
    std::vector<int32_t> sequence, position32;
    std::vector<int64_t> position;
    std::vector<int32_t> tiles;
    const int64_t tile_tokens = cuda::attention_tile_tokens(ac.heads, ac.kv_heads);
    for (size_t s = 0; s < slices.size(); ++s) {
      for (int64_t first = 0; first < slices[s].n; first += tile_tokens) {
        tiles.push_back(static_cast<int32_t>(sequence.size() + static_cast<size_t>(first)));
        tiles.push_back(static_cast<int32_t>(std::min(tile_tokens, slices[s].n - first)));
      }
      for (int64_t i = 0; i < slices[s].n; ++i) {
        sequence.push_back(static_cast<int32_t>(s));
        position.push_back(slices[s].start + i);
        position32.push_back(static_cast<int32_t>(slices[s].start + i));
      }
    }
    const auto n = static_cast<int64_t>(sequence.size());
    std::vector<float> q(static_cast<size_t>(n * q_dim));
    for (float& v : q) v = normal(rng);
    const size_t elements = static_cast<size_t>(pages * P * kv_dim);
    const size_t element_bytes = ac.fp8_cache ? 1 : 2;
    const float k_scale = ac.fp8_cache ? 0.5f : 1.0f, v_scale = ac.fp8_cache ? 2.0f : 1.0f;
    std::vector<uint8_t> keys(elements * element_bytes), values(keys.size());
    std::vector<float> ref_keys(elements), ref_values(elements);  // what the kernel reads, for the CPU
    for (size_t i = 0; i < elements; ++i) {
      ref_keys[i] = store_cache_element(ac.fp8_cache, k_scale, normal(rng), &keys[i * element_bytes]);
    }
    for (size_t i = 0; i < elements; ++i) {
      ref_values[i] = store_cache_element(ac.fp8_cache, v_scale, normal(rng), &values[i * element_bytes]);
    }

    const std::vector<float> want = cpu_attention(
        {&sequence, &position, &table_ptrs, P, ac.heads, ac.kv_heads, ac.head_dim}, q, ref_keys, ref_values);

    const DeviceBuffer q_d = to_device(q), k_d = to_device(keys), v_d = to_device(values), t_d = to_device(tables),
                       s_d = to_device(sequence), p_d = to_device(position32), tiles_d = to_device(tiles);
    // Unsplit, and split-KV with more splits than some tiles have key steps (empty shares).
    for (int64_t splits : {int64_t{1}, int64_t{3}, cuda::kMaxAttentionSplits}) {
      SCOPED_TRACE("splits " + std::to_string(splits));
      DeviceBuffer partials(static_cast<size_t>(n * ac.heads * splits * (ac.head_dim + 2)) * 4, "partials");
      DeviceBuffer out_d(static_cast<size_t>(n * q_dim) * 2, "attention output");
      KILN_CUDA_CHECK(cudaMemset(out_d.get(), 0xff, out_d.bytes()));  // NaN: an unwritten element fails
      cuda::AttentionArgs a;
      a.q = q_d.get<float>();
      a.q_stride = q_dim;
      a.kv = {k_d.get(), v_d.get(), ac.fp8_cache ? DType::F8E4M3 : DType::BF16, k_scale, v_scale};
      a.step.block_tables = t_d.get<int32_t>();
      a.step.table_stride = stride;
      a.step.token_sequence = s_d.get<int32_t>();
      a.step.token_position = p_d.get<int32_t>();
      a.tiles = tiles_d.get<int32_t>();
      a.num_tiles = static_cast<int64_t>(tiles.size() / 2);
      a.step.page_size = P;
      a.step.heads = ac.heads;
      a.step.kv_heads = ac.kv_heads;
      a.step.head_dim = ac.head_dim;
      a.scale = 1.0f / std::sqrt(static_cast<float>(ac.head_dim));
      a.out = out_d.get<bf16>();
      a.splits = splits;
      a.step.tokens = n;
      a.partials = partials.get<float>();
      cuda::paged_attention(a, nullptr);
      const auto got = bf16_to_floats(to_host<uint16_t>(out_d, want.size()));
      for (size_t i = 0; i < got.size(); ++i) ASSERT_TRUE(std::isfinite(got[i])) << "element " << i << " not written";
      EXPECT_LT(relative_norm_error(got, want), 5e-3);
    }
  }
}

TEST(CudaKernels, RmsNormSiluMulAndArgmaxMatchTheCpuDefinitions) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  const int64_t rows = 5, hidden = 4096, inter = 1000, vocab = 50000;
  std::vector<float> h(static_cast<size_t>(rows * hidden)), gamma(static_cast<size_t>(hidden));
  for (float& v : h) v = normal(rng);
  for (float& v : gamma) v = 1.0f + 0.1f * normal(rng);
  std::vector<float> want(h.size());
  for (int64_t r = 0; r < rows; ++r) {
    double sq = 0;
    for (int64_t i = 0; i < hidden; ++i) sq += static_cast<double>(h[static_cast<size_t>(r * hidden + i)]) * h[static_cast<size_t>(r * hidden + i)];
    const double inv = 1.0 / std::sqrt(sq / hidden + 1e-5);
    for (int64_t i = 0; i < hidden; ++i) {
      want[static_cast<size_t>(r * hidden + i)] = static_cast<float>(h[static_cast<size_t>(r * hidden + i)] * inv * gamma[static_cast<size_t>(i)]);
    }
  }
  const DeviceBuffer h_d = to_device(h), g_d = to_device(gamma);
  DeviceBuffer y_d(h.size() * 2, "norm output");
  KILN_CUDA_CHECK(cudaMemset(y_d.get(), 0xff, y_d.bytes()));
  cuda::rms_norm_to_bf16(h_d.get<float>(), nullptr, rows, hidden, g_d.get<float>(), 1e-5f, y_d.get<bf16>(), nullptr);
  EXPECT_LT(relative_norm_error(bf16_to_floats(to_host<uint16_t>(y_d, h.size())), want), 5e-3);

  std::vector<float> gate_up(static_cast<size_t>(rows * 2 * inter));
  for (float& v : gate_up) v = normal(rng);
  std::vector<float> act_want(static_cast<size_t>(rows * inter));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < inter; ++i) {
      // gate and up interleaved, as the CUDA model lays out the gate_up projection
      const double g = gate_up[static_cast<size_t>(r * 2 * inter + 2 * i)];
      act_want[static_cast<size_t>(r * inter + i)] = static_cast<float>(g / (1 + std::exp(-g)) * gate_up[static_cast<size_t>(r * 2 * inter + 2 * i + 1)]);
    }
  }
  const DeviceBuffer gu_d = to_device(gate_up);
  DeviceBuffer act_d(act_want.size() * 2, "silu output");
  KILN_CUDA_CHECK(cudaMemset(act_d.get(), 0xff, act_d.bytes()));
  cuda::silu_mul_to_bf16(gu_d.get<float>(), rows, inter, act_d.get<bf16>(), nullptr);
  EXPECT_LT(relative_norm_error(bf16_to_floats(to_host<uint16_t>(act_d, act_want.size())), act_want), 5e-3);

  std::vector<float> logits(static_cast<size_t>(rows * vocab));
  for (float& v : logits) v = normal(rng);
  logits[static_cast<size_t>(2 * vocab + 777)] = 100.0f;
  logits[static_cast<size_t>(2 * vocab + 40000)] = 100.0f;  // a tie: the first index wins
  logits[static_cast<size_t>(4 * vocab + 3)] = -1e30f;  // a row of negatives around one value
  for (int64_t i = 0; i < vocab; ++i) logits[static_cast<size_t>(3 * vocab + i)] = -1.0f - static_cast<float>(i % 7);
  const DeviceBuffer l2_d = to_device(logits);
  DeviceBuffer key_d(rows * 8, "argmax output");
  KILN_CUDA_CHECK(cudaMemset(key_d.get(), 0xff, key_d.bytes()));  // the launcher must reset the keys
  cuda::argmax_rows(l2_d.get<float>(), rows, vocab, key_d.get<unsigned long long>(), nullptr);
  std::vector<int32_t> idx;
  for (auto key : to_host<unsigned long long>(key_d, rows)) idx.push_back(cuda::argmax_index(key));
  for (int64_t r = 0; r < rows; ++r) {
    const auto row = logits.begin() + r * vocab;
    EXPECT_EQ(idx[static_cast<size_t>(r)], std::max_element(row, row + vocab) - row) << "row " << r;
  }
  EXPECT_EQ(idx[2], 777);
}

TEST(CudaGemm, EveryHeuristicAlgorithmComputesXTimesWTransposedPlusBetaY) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t m = 5, n = 300, k = 256;
  std::vector<uint16_t> w(static_cast<size_t>(n * k)), x(static_cast<size_t>(m * k));
  for (auto& v : w) v = f32_to_bf16(normal(rng));
  for (auto& v : x) v = f32_to_bf16(normal(rng));
  std::vector<float> y0(static_cast<size_t>(m * n));
  for (float& v : y0) v = normal(rng);
  std::vector<float> want(y0.size());
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double s = y0[static_cast<size_t>(i * n + j)];
      for (int64_t c = 0; c < k; ++c) {
        s += static_cast<double>(bf16_to_f32(x[static_cast<size_t>(i * k + c)])) * bf16_to_f32(w[static_cast<size_t>(j * k + c)]);
      }
      want[static_cast<size_t>(i * n + j)] = static_cast<float>(s);
    }
  }
  cuda::LtContext context;
  cuda::LtGemm gemm(context, n, k);
  const DeviceBuffer w_d = to_device(w), x_d = to_device(x);
  const auto proposals = gemm.heuristic(m, 8);
  ASSERT_FALSE(proposals.empty());
  for (const auto& p : proposals) {
    SCOPED_TRACE(cuda::algo_config(p.algo).dump());
    const cublasLtMatmulAlgo_t restored = cuda::algo_from_hex(cuda::algo_to_hex(p.algo));
    DeviceBuffer y_d = to_device(y0);
    gemm.run(restored, w_d.get(), x_d.get(), m, y_d.get<float>(), 1.0f, nullptr);
    EXPECT_LT(relative_norm_error(to_host<float>(y_d, y0.size()), want), 1e-5);
  }
  EXPECT_THROW(cuda::algo_from_hex("zz"), Error);
}

TEST(CudaGemm, KilnGemvComputesXTimesWTransposedPlusBetaYForUpToEightRows) {
  SKIP_WITHOUT_GPU();
  std::mt19937 rng(9);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t n = 301, k = 1032;  // odd n: a warp's second row is missing at the end
  std::vector<uint16_t> w(static_cast<size_t>(n * k)), x(static_cast<size_t>(cuda::kGemvMaxRows * k));
  for (auto& v : w) v = f32_to_bf16(normal(rng));
  for (auto& v : x) v = f32_to_bf16(normal(rng));
  std::vector<float> y0(static_cast<size_t>(cuda::kGemvMaxRows * n));
  for (float& v : y0) v = normal(rng);
  const DeviceBuffer w_d = to_device(w), x_d = to_device(x);
  for (int64_t m = 1; m <= cuda::kGemvMaxRows; ++m) {
    for (float beta : {0.0f, 1.0f}) {
      SCOPED_TRACE("m " + std::to_string(m) + " beta " + std::to_string(beta));
      std::vector<float> want(static_cast<size_t>(m * n));
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          double s = beta * y0[static_cast<size_t>(i * n + j)];
          for (int64_t c = 0; c < k; ++c) {
            s += static_cast<double>(bf16_to_f32(x[static_cast<size_t>(i * k + c)])) * bf16_to_f32(w[static_cast<size_t>(j * k + c)]);
          }
          want[static_cast<size_t>(i * n + j)] = static_cast<float>(s);
        }
      }
      std::vector<float> start(y0.begin(), y0.begin() + m * n);
      if (beta == 0.0f) std::fill(start.begin(), start.end(), std::nanf(""));  // beta 0 must not read y
      for (int split : cuda::kGemvSplits) {
        DeviceBuffer y_d = to_device(start);
        cuda::gemv_bf16(w_d.get<bf16>(), x_d.get<bf16>(), m, n, k, y_d.get<float>(), beta, nullptr, split);
        EXPECT_LT(relative_norm_error(to_host<float>(y_d, want.size()), want), 1e-5) << "split " << split;
        // The residual read before the PDL wait (GemvOut::y_settled): the same sums.
        const auto settled = gemv_result(w_d.get(), x_d.get(), false, m, n, k, 1.0f, beta, start, split, true, true);
        EXPECT_LT(relative_norm_error(settled, want), 1e-5) << "settled split " << split;
      }
    }
  }
  EXPECT_THROW(cuda::gemv_bf16(w_d.get<bf16>(), x_d.get<bf16>(), 9, n, k, nullptr, 0.0f, nullptr), Error);

}

// The whole model against the double reference, prefill of 4 tokens then token-by-token decode.
double model_error(const std::string& engine_path, const TinySpec& spec, const TensorMap& tensors, double* top1) {
  cuda::CudaModel model(Engine::load(engine_path));
  std::vector<int32_t> prompt;
  for (int i = 0; i < 48; ++i) prompt.push_back((i * 37 + 11) % static_cast<int>(spec.vocab));
  const auto want = reference_logits(tiny_config(spec), tensors, prompt);
  auto cache = model.new_cache(8, 16);
  std::vector<int32_t> table{3, 0, 7, 1, 5, 2, 6, 4};
  std::vector<float> logits(static_cast<size_t>(spec.vocab));
  double worst = 0;
  int agree = 0, rows = 0;
  for (int64_t pos = 3; pos < static_cast<int64_t>(prompt.size()); ++pos) {
    ForwardBatch batch;
    if (pos == 3) batch.add(prompt.data(), 4, 0, table.data(), true);
    else batch.add(&prompt[static_cast<size_t>(pos)], 1, pos, table.data(), true);
    int32_t next = -1;
    model.forward(batch, cache, &next, logits.data());
    const auto& ref = want[static_cast<size_t>(pos)];
    double err = 0, scale = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      err = std::max(err, std::fabs(logits[i] - ref[i]));
      scale = std::max(scale, std::fabs(ref[i]));
    }
    worst = std::max(worst, err / scale);
    agree += next == static_cast<int32_t>(std::max_element(ref.begin(), ref.end()) - ref.begin());
    ++rows;
  }
  *top1 = static_cast<double>(agree) / rows;
  return worst;
}

TEST(CudaModel, Bf16EngineMatchesTheReferenceForEveryArchitectureItRuns) {
  SKIP_WITHOUT_GPU();
  for (auto c : tiny_architectures()) {
    SCOPED_TRACE(c.name);
    c.spec.hidden = 128;  // head_dim 32: the smallest the attention kernel takes
    c.spec.intermediate = 256;
    if (c.spec.head_dim == 0) c.spec.heads = 4;
    const TensorMap tensors = tiny_tensors(c.spec);
    const std::string dir = temp_dir(std::string("cuda_") + c.name);
    write_checkpoint(dir, c.spec, tensors);
    double top1 = 0;
    EXPECT_LT(model_error(build_cuda_engine(dir, std::string(c.name) == "llama"), c.spec, tensors, &top1), 2e-2);
    EXPECT_GE(top1, 0.95);
  }
}

TEST(CudaModel, Fp8EngineMostlyKeepsTheReferenceTopOneToken) {
  SKIP_WITHOUT_GPU();
  TinySpec spec;
  spec.hidden = 128;
  spec.intermediate = 256;
  const TensorMap tensors = tiny_tensors(spec);
  const std::string dir = temp_dir("cuda_fp8");
  write_checkpoint(dir, spec, tensors);
  // The CPU fp8 engine's bounds on this kind of checkpoint (runtime_test.cpp): E4M3 keeps 3 mantissa
  // bits of weights and activations; random weights give flat logits, so top-1 flips on small errors.
  // Autotuned, so the fp8 GEMV and cuBLASLt fp8 GEMMs both run (decode rows, 4-token prefill).
  double top1 = 0;
  const std::string engine = build_cuda_engine(dir, true, Precision::FP8, write_calibration(dir, spec.vocab));
  EXPECT_LT(model_error(engine, spec, tensors, &top1), 0.25);
  EXPECT_GE(top1, 0.8);
}

// Top-1 agreement of an fp8 KV cache with the bf16 one on the same engine, teacher-forced: each step
// of the fp8-cache run is fed the bf16-cache run's token, so one flip does not derail the rest.
// Prefill goes through RoPE + tiled attention, decode through the fused decode attention, both
// reading and writing e4m3.
double fp8_kv_top1_agreement(cuda::CudaModel& model) {
  const int64_t steps = 40;
  int64_t same = 0, total = 0;
  for (const std::vector<int32_t>& prompt : {std::vector<int32_t>{5, 9, 13, 2, 77, 31, 8, 60, 19, 4, 44, 23, 90, 3, 11,
                                                                  70, 52, 36},
                                             std::vector<int32_t>{1}, std::vector<int32_t>{40, 41, 42, 43, 44}}) {
    const std::vector<int32_t> want = cuda::generate_greedy(model, prompt, steps, {}, DType::BF16).tokens;
    EXPECT_EQ(static_cast<int64_t>(want.size()), steps);
    auto cache = model.new_cache(8, 16, DType::F8E4M3);
    const std::vector<int32_t> table{0, 1, 2, 3, 4, 5, 6, 7};
    int32_t next = -1;
    ForwardBatch prefill;
    prefill.add(prompt.data(), static_cast<int64_t>(prompt.size()), 0, table.data(), true);
    model.forward(prefill, cache, &next);
    for (int64_t step = 0; step < steps; ++step) {
      same += next == want[static_cast<size_t>(step)] ? 1 : 0;
      ++total;
      if (step + 1 == steps) break;
      ForwardBatch decode;
      decode.add(&want[static_cast<size_t>(step)], 1, static_cast<int64_t>(prompt.size()) + step, table.data(), true);
      model.forward(decode, cache, &next);
    }
  }
  return static_cast<double>(same) / static_cast<double>(total);
}

// A bf16 engine's fp8 cache uses scale 1; an fp8 engine's its calibrated per-layer KV scales
// (quantization.kv_scales), checked present. Random weights give flat logits, so top-1 may flip on
// small errors; the bound is the fp8 engine's.
TEST(CudaModel, Fp8KvCacheMostlyKeepsTheBf16KvCacheTopOneTokens) {
  SKIP_WITHOUT_GPU();
  TinySpec spec;
  spec.hidden = 128;
  spec.intermediate = 256;
  spec.heads = 4;
  spec.kv_heads = 2;
  const TensorMap tensors = tiny_tensors(spec);
  const std::string dir = temp_dir("cuda_fp8_kv");
  write_checkpoint(dir, spec, tensors);
  {
    cuda::CudaModel model(Engine::load(build_cuda_engine(dir, true)));
    EXPECT_GE(fp8_kv_top1_agreement(model), 0.8) << "bf16 engine";
  }
  auto engine = Engine::load(build_cuda_engine(dir, true, Precision::FP8, write_calibration(dir, spec.vocab)));
  ASSERT_EQ(engine->header()["quantization"]["kv_scales"].size(), static_cast<size_t>(spec.layers));
  cuda::CudaModel model(engine);
  EXPECT_GE(fp8_kv_top1_agreement(model), 0.8) << "fp8 engine, calibrated KV scales";
}

TEST(CudaModel, BatchedSequencesGetTheirAloneTokens) {
  SKIP_WITHOUT_GPU();
  TinySpec spec;
  spec.hidden = 256;
  spec.intermediate = 512;
  spec.heads = 4;
  spec.kv_heads = 2;
  const TensorMap tensors = tiny_tensors(spec);
  const std::string dir = temp_dir("cuda_batched");
  write_checkpoint(dir, spec, tensors);
  cuda::CudaModel model(Engine::load(build_cuda_engine(dir, true)));
  const int64_t steps = 24;
  std::vector<std::vector<int32_t>> prompts{{5, 9, 13}, {1}, {40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57}};
  std::vector<std::vector<int32_t>> alone;
  for (const auto& p : prompts) alone.push_back(cuda::generate_greedy(model, p, steps).tokens);

  // All three together: prefills in one mixed batch, then one decode batch per step.
  auto cache = model.new_cache(12, 16);
  std::vector<std::vector<int32_t>> tables{{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9, 10, 11}};
  std::vector<std::vector<int32_t>> got(prompts.size());
  ForwardBatch prefill;
  for (size_t s = 0; s < prompts.size(); ++s) {
    prefill.add(prompts[s].data(), static_cast<int64_t>(prompts[s].size()), 0, tables[s].data(), true);
  }
  std::vector<int32_t> next(prompts.size());
  model.forward(prefill, cache, next.data());
  for (int64_t step = 1; step <= steps; ++step) {
    for (size_t s = 0; s < prompts.size(); ++s) got[s].push_back(next[s]);
    if (step == steps) break;
    ForwardBatch batch;
    const std::vector<int32_t> tokens = next;
    for (size_t s = 0; s < prompts.size(); ++s) {
      batch.add(&tokens[s], 1, static_cast<int64_t>(prompts[s].size()) + step - 1, tables[s].data(), true);
    }
    model.forward(batch, cache, next.data());
  }
  for (size_t s = 0; s < prompts.size(); ++s) EXPECT_EQ(got[s], alone[s]) << "sequence " << s;
}

TEST(CudaModel, DecodeGraphReplaysGiveTheTokensOfDirectLaunches) {
  SKIP_WITHOUT_GPU();
  TinySpec spec;
  spec.hidden = 256;
  spec.intermediate = 512;
  spec.heads = 8;
  spec.kv_heads = 2;
  const TensorMap tensors = tiny_tensors(spec);
  const std::string dir = temp_dir("cuda_graphs");
  write_checkpoint(dir, spec, tensors);
  cuda::CudaModel model(Engine::load(build_cuda_engine(dir, false)));
  const std::vector<int32_t> prompt{7, 3, 90, 12, 5};
  // Asking for the logits keeps every step on direct launches; without, decode steps replay a graph.
  const auto direct = cuda::generate_greedy(model, prompt, 40, [](const float*, int64_t) {});
  const auto graphed = cuda::generate_greedy(model, prompt, 40);
  const auto again = cuda::generate_greedy(model, {1, 2}, 40);  // a second cache: the graph is recaptured
  EXPECT_EQ(graphed.tokens, direct.tokens);
  EXPECT_EQ(cuda::generate_greedy(model, {1, 2}, 40, [](const float*, int64_t) {}).tokens, again.tokens);
}

// kiln-native bench's host round trip: the step's graph replayed back to back has a GPU time of its
// own; a shape no step has captured yet (a fresh cache), or a step with a prompt, is refused.
TEST(CudaModel, ReplaysTheDecodeGraphOfAStepItRan) {
  SKIP_WITHOUT_GPU();
  const std::string dir = write_tiny_checkpoint("cuda_replay", cuda_tiny_spec());
  cuda::CudaModel model(Engine::load(build_cuda_engine(dir, false)));
  const cuda::BenchResult r = cuda::bench(model, 8, 4, 1);
  EXPECT_GT(r.decode_step_ms, 0.0);
  EXPECT_GT(r.decode_replay_ms, 0.0);

  cuda::CudaKvCache cache = model.new_cache(4);
  const std::vector<int32_t> table{0, 1, 2, 3};
  const std::vector<int32_t> prompt{7, 3, 90};
  ForwardBatch decode;
  decode.add(&prompt[0], 1, 3, table.data(), true);
  try {
    model.replay_decode_ms(decode, cache, 2);
    ADD_FAILURE() << "replayed a graph no step had captured";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no decode graph of this shape"), std::string::npos) << e.what();
  }
  ForwardBatch prefill;
  prefill.add(prompt.data(), 3, 0, table.data(), true);
  try {
    model.replay_decode_ms(prefill, cache, 2);
    ADD_FAILURE() << "replayed a step with a prompt";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a greedy decode-only step"), std::string::npos) << e.what();
  }
}

// Where a decode step's time goes: the families of the step's graph, each timed with its nodes
// disabled, slowest first; decode attention once a layer, the embedding once a step. The ablation
// runs on a graph and cache of its own: the model decodes the same tokens afterwards.
TEST(CudaModel, KernelCostsNameEveryKernelFamilyOfADecodeStep) {
  SKIP_WITHOUT_GPU();
  const TinySpec spec = cuda_tiny_spec();
  cuda::CudaModel model(Engine::load(build_cuda_engine(write_tiny_checkpoint("cuda_kernel_costs", spec), false)));
  const std::vector<int32_t> prompt{7, 3, 90, 12};
  const auto before = cuda::generate_greedy(model, prompt, 12);
  const cuda::BenchResult r = cuda::bench(model, 8, 4, 1, DType::BF16, true);
  EXPECT_GT(r.kernel_costs_step_ms, 0.0);
  ASSERT_FALSE(r.kernel_costs.empty());
  std::map<std::string, int64_t> launches;
  for (size_t i = 0; i < r.kernel_costs.size(); ++i) {
    const auto& c = r.kernel_costs[i];
    EXPECT_FALSE(c.kernel.empty());
    EXPECT_NE(c.kernel.back(), ')') << c.kernel;  // no parameter list
    // cuBLASLt's kernels (this engine's GEMMs, not autotuned) may come without their grid.
    if (c.kernel != "library kernel") {
      EXPECT_GT(c.blocks, 0u) << c.kernel;
    }
    const std::string family = c.kernel.substr(0, c.kernel.find('<'));
    // Only a cluster launch (decode attention's) may refuse to be disabled; those sort last.
    if (c.step_ms_without) {
      EXPECT_GT(*c.step_ms_without, 0.0) << c.kernel;
      if (i > 0) {
        ASSERT_TRUE(r.kernel_costs[i - 1].step_ms_without) << "an unmeasured family sorted first";
        EXPECT_LE(*r.kernel_costs[i - 1].step_ms_without, *c.step_ms_without);
      }
    } else {
      EXPECT_EQ(family, "decode_attention_kernel");
    }
    launches[family] += c.launches;
  }
  EXPECT_EQ(launches["decode_attention_kernel"], spec.layers);
  EXPECT_EQ(launches["embed_rows_kernel"], 1);
  EXPECT_EQ(cuda::generate_greedy(model, prompt, 12).tokens, before.tokens);
}

// KILN_CUDA_TACTIC replaces a bucket's autotuned tactic at load (for an A/B in the decode graph):
// a valid override loads and decodes, a bucket the table lacks or a split the GEMV lacks is refused.
TEST(CudaModel, TacticOverridesReplaceABucketsTacticOrAreRefusedNamingIt) {
  SKIP_WITHOUT_GPU();
  const TinySpec spec = cuda_tiny_spec();
  const BuildOptions o = build_autotuned_tiny_engine("cuda_tactic_override", spec);
  const auto engine = Engine::load(o.out_path);
  const std::string gate_up = std::to_string(2 * spec.intermediate) + "x" + std::to_string(spec.hidden) + ":bf16";
  const auto load_with = [&](const std::string& text) {
    setenv("KILN_CUDA_TACTIC", text.c_str(), 1);  // read by the constructor
    try {
      auto model = std::make_unique<cuda::CudaModel>(engine);
      unsetenv("KILN_CUDA_TACTIC");
      return model;
    } catch (...) {
      unsetenv("KILN_CUDA_TACTIC");
      throw;
    }
  };
  auto forced = load_with(gate_up + "@1=cublaslt;" + gate_up + "@8=kiln-gemv/2/unstaged");
  EXPECT_EQ(cuda::generate_greedy(*forced, {7, 3, 90}, 8).tokens.size(), 8u);
  const std::vector<std::pair<std::string, std::string>> refused = {
      {gate_up + "@3=cublaslt", "no such GEMM bucket"},
      {"7x7:bf16@1=cublaslt", "no such GEMM bucket"},
      {gate_up + "@1=kiln-gemv/3", "kiln-gemv has no split 3 for bf16"},
      {gate_up + "@1=kiln-gemv/64", "the wgmma GEMV (split 64) runs E4M3 at buckets up to 8"},
      {gate_up + "@1=kiln", "neither cublaslt nor kiln-gemv"},
  };
  for (const auto& [text, why] : refused) {
    SCOPED_TRACE(text);
    try {
      load_with(text);
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
    }
  }
}

// Serving past the engine's max_batch would run every large step on tactics tuned for fewer rows:
// the CUDA step model refuses it, naming the option, both limits and the field to rebuild with.
TEST(CudaStepModel, RefusesAMaxBatchSizePastTheEnginesMaxBatch) {
  SKIP_WITHOUT_GPU();
  BuildOptions o = cuda_build_options(write_tiny_checkpoint("cuda_serving_batch", cuda_tiny_spec()));
  o.max_batch = 4;
  const auto engine = Engine::load(build_cuda_engine(o));
  StepModelOptions options;
  options.page_size = 16;
  options.max_seq_len = 128;
  options.max_batch_size = 4;
  options.max_batched_tokens = 256;
  options.kv.pages = 64;  // not 90% of the card for a tiny model
  EXPECT_EQ(make_step_model(engine, options)->backend(), std::string("cuda"));
  options.max_batch_size = 5;
  try {
    make_step_model(engine, options);
    ADD_FAILURE() << "maxBatchSize 5 was accepted on a max-batch-4 engine";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("maxBatchSize (5) is past the engine's max_batch (4)"), std::string::npos) << m;
    EXPECT_NE(m.find("spec.engine.maxBatchSize"), std::string::npos) << m;
  }
}

// An autotuned tiny engine (buckets 1, 8, 64): gate_up (its own shape here) races with the SiLU·mul
// where kiln-gemv races, which writes it itself, so cuBLASLt is credited the silu_mul kernel's time
// there; at 64 rows it is a plain cuBLASLt race.
TEST(CudaAutotune, GateUpRacesWithTheSiluMulWhereTheGemvRuns) {
  SKIP_WITHOUT_GPU();
  const TinySpec spec = cuda_tiny_spec();
  const BuildOptions o = build_autotuned_tiny_engine("cuda_autotune_silu", spec);
  const auto engine = Engine::load(o.out_path);  // owns the header the loop walks
  int gate_up_raced = 0;
  for (const auto& entry : engine->header().at("autotune").at("entries")) {
    const bool gate_up = entry.at("n") == 2 * spec.intermediate && entry.at("k") == spec.hidden;
    const bool silu = gate_up && entry.at("bucket").get<int64_t>() <= cuda::kGemvMaxRows;
    EXPECT_EQ(entry.contains("silu_us"), silu) << entry.at("n") << " bucket " << entry.at("bucket");
    if (!silu) continue;
    ++gate_up_raced;
    EXPECT_TRUE(entry.contains("note"));
    const double silu_us = entry.at("silu_us").get<double>(), us = entry.at("us").get<double>();
    EXPECT_GT(silu_us, 0.0);
    constexpr double kRounding = 0.016;  // three values, each rounded to 0.01
    if (entry.at("tactic") == "cublaslt") {
      EXPECT_NEAR(us, entry.at("cublaslt_us").get<double>() + silu_us, kRounding);
    } else {
      double fastest = 1e30;
      for (const auto& [name, t] : entry.at("kiln_gemv_us").items()) fastest = std::min(fastest, t.get<double>());
      EXPECT_DOUBLE_EQ(us, fastest);
      EXPECT_LE(us, entry.at("cublaslt_us").get<double>() + silu_us + kRounding);
    }
  }
  EXPECT_EQ(gate_up_raced, 2);
}

// Engines built while the autotuner also raced kiln-skinny (a tensor-core GEMM for 9..64 rows,
// since removed) may name it in their m = 64 entries, beside that bucket's best cuBLASLt algorithm:
// such an engine loads and runs that algorithm, so a 20-token prefill (64-row choices) gives the
// logits of the engine as built.
TEST(CudaModel, AnOlderEnginesKilnSkinnyEntriesRunTheirCublasLtAlgorithm) {
  SKIP_WITHOUT_GPU();
  const TinySpec spec = cuda_tiny_spec();
  const BuildOptions o = build_autotuned_tiny_engine("cuda_skinny_entries", spec);
  const EngineFile built = read_engine_file(o.out_path);
  Json header = built.header;
  int renamed = 0;
  for (auto& entry : header["autotune"]["entries"]) {
    if (entry.at("bucket") != 64) continue;
    entry["tactic"] = "kiln-skinny";
    entry["skinny_tile"] = 64;
    entry["skinny_splits"] = 3;
    entry["kiln_skinny_us"] = Json{{"tile64_splits3", 1.0}};
    ++renamed;
  }
  ASSERT_GT(renamed, 0);
  std::vector<TensorBlob> blobs;
  for (const auto& s : built.sections) {
    const uint8_t* data = built.file->data() + s.offset;
    blobs.push_back(TensorBlob{s.name, s.dtype, s.shape, s.layout, std::vector<uint8_t>(data, data + s.bytes)});
  }
  cuda::CudaModel as_built(Engine::load(o.out_path));
  cuda::CudaModel older(Engine::from_tensors(header, std::move(blobs)));
  std::vector<int32_t> prompt;
  for (int64_t i = 0; i < 20; ++i) prompt.push_back(static_cast<int32_t>((i * 7 + 3) % spec.vocab));
  std::vector<std::vector<float>> want, got;
  const auto keep = [](std::vector<std::vector<float>>& out) {
    return [&out](const float* logits, int64_t vocab) { out.emplace_back(logits, logits + vocab); };
  };
  const auto want_tokens = cuda::generate_greedy(as_built, prompt, 4, keep(want)).tokens;
  EXPECT_EQ(cuda::generate_greedy(older, prompt, 4, keep(got)).tokens, want_tokens);
  EXPECT_EQ(got, want);
}

TEST(CudaModel, RefusesAStoredAlgorithmThatIsNotACublasLtAlgorithm) {
  SKIP_WITHOUT_GPU();
  EXPECT_THROW(cuda::algo_from_hex(std::string(128, 'g')), Error);
  cuda::LtContext context;
  cuda::LtGemm gemm(context, 64, 64);
  cublasLtMatmulAlgo_t garbage{};
  std::memset(&garbage, 0x7f, sizeof garbage);
  EXPECT_THROW(gemm.check(garbage, 1), Error);
}

}  // namespace
}  // namespace kiln::test
