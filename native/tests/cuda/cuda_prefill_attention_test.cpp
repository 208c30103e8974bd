// The tensor-core prefill attention against paged_attention on the same inputs: a mixed batch of
// prefill chunks after cached prefixes, a fresh prompt and decode tokens over shuffled pages; GQA
// groups 1 to 96 (two head chunks), head_dim 64 and 128, windows, bf16 and fp8 (E4M3, scaled)
// caches, bf16 and fp8 outputs. Cache slots past each sequence's last position hold NaN, so a key
// read past a tile's end shows; outputs start as NaN, so an unwritten element fails. Then the model
// with the tensor-core prefill (the default) against itself with KILN_CUDA_PREFILL_MMA=0.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>

#include "backend/cuda/kernels.h"
#include "backend/cuda/model.h"
#include "backend/cuda/prefill_attention.h"
#include "compiler/build.h"
#include "core/dtype.h"
#include "core/error.h"
#include "cuda_engine_builds.h"
#include "device_helpers.h"
#include "engine/engine.h"
#include "tiny_checkpoint.h"

namespace kiln::test {
namespace {

using cuda::DeviceBuffer;

struct PrefillCase {
  int64_t heads, kv_heads, head_dim, window;
  bool fp8_cache, fp8_out;
};

// An fp8 cache's scales: powers of two either side of 1, so a kernel that skips or inverts one is off
// by a factor of 4.
constexpr float kKeyScale = 0.5f, kValueScale = 2.0f;
constexpr int64_t kPageSize = 16;
// (first position, tokens) per sequence: chunks after cached prefixes (one ending mid key step, one
// spanning several), a fresh prompt longer than a tile, decode tokens, a chunk starting on a page edge.
const std::vector<std::pair<int64_t, int64_t>> kSlices{{37, 64}, {0, 150}, {200, 1}, {5, 1}, {300, 77}, {64, 65}};

// Tiles of at most `tile_tokens` consecutive tokens of one sequence: (first token, count) pairs.
std::vector<int32_t> tiles_of(int64_t tile_tokens) {
  std::vector<int32_t> tiles;
  int64_t first = 0;
  for (const auto& [start, n] : kSlices) {
    for (int64_t t = 0; t < n; t += tile_tokens) {
      tiles.push_back(static_cast<int32_t>(first + t));
      tiles.push_back(static_cast<int32_t>(std::min(tile_tokens, n - t)));
    }
    first += n;
  }
  return tiles;
}

std::vector<float> read_output(const DeviceBuffer& out, size_t count, bool fp8, float scale) {
  std::vector<float> got(count);
  if (fp8) {
    const auto raw = to_host<uint8_t>(out, count);
    decode_to_f32(DType::F8E4M3, raw.data(), got.data(), count);
    for (float& v : got) v *= scale;
  } else {
    const auto raw = to_host<uint16_t>(out, count);
    for (size_t i = 0; i < count; ++i) got[i] = bf16_to_f32(raw[i]);
  }
  return got;
}

TEST(CudaPrefillAttention, TileTokensFillSixtyFourRows) {
  EXPECT_EQ(cuda::prefill_attention_tile_tokens(32, 32), 64);
  EXPECT_EQ(cuda::prefill_attention_tile_tokens(32, 8), 16);
  EXPECT_EQ(cuda::prefill_attention_tile_tokens(28, 4), 9);
  EXPECT_EQ(cuda::prefill_attention_tile_tokens(192, 2), 1);
  EXPECT_TRUE(cuda::prefill_attention_supports_head_dim(64));
  EXPECT_TRUE(cuda::prefill_attention_supports_head_dim(128));
  EXPECT_FALSE(cuda::prefill_attention_supports_head_dim(32));
}

TEST(CudaPrefillAttention, MatchesPagedAttentionOnAMixedBatch) {
  SKIP_WITHOUT_GPU();
  const std::vector<PrefillCase> cases{
      {8, 8, 64, 0, false, false},   {32, 8, 128, 0, false, false}, {32, 8, 64, 0, true, false},
      {32, 4, 128, 0, true, true},   {16, 2, 64, 0, false, true},   {8, 2, 128, 40, false, false},
      {32, 8, 64, 100, true, true},  {28, 4, 128, 0, false, false}, {192, 2, 64, 0, false, false},
      {4, 4, 128, 24, true, false}};
  for (const PrefillCase& pc : cases) {
    SCOPED_TRACE("heads " + std::to_string(pc.heads) + "/" + std::to_string(pc.kv_heads) + " dim " +
                 std::to_string(pc.head_dim) + " window " + std::to_string(pc.window) +
                 (pc.fp8_cache ? " fp8 cache" : "") + (pc.fp8_out ? " fp8 out" : ""));
    std::mt19937 rng(static_cast<uint32_t>(pc.heads * 131 + pc.head_dim + pc.window + (pc.fp8_cache ? 7 : 0)));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const int64_t D = pc.head_dim, P = kPageSize;
    const int64_t q_dim = pc.heads * D, kv_dim = pc.kv_heads * D, q_stride = q_dim + 2 * kv_dim;
    int64_t stride = 0, n = 0;
    for (const auto& [start, count] : kSlices) {
      stride = std::max(stride, (start + count + P - 1) / P);
      n += count;
    }
    const auto sequences = static_cast<int64_t>(kSlices.size());
    std::vector<int32_t> tables(static_cast<size_t>(sequences * stride));
    for (size_t i = 0; i < tables.size(); ++i) tables[i] = static_cast<int32_t>(i);
    std::shuffle(tables.begin(), tables.end(), rng);
    std::vector<int32_t> sequence, position;
    for (int64_t s = 0; s < sequences; ++s) {
      for (int64_t i = 0; i < kSlices[static_cast<size_t>(s)].second; ++i) {
        sequence.push_back(static_cast<int32_t>(s));
        position.push_back(static_cast<int32_t>(kSlices[static_cast<size_t>(s)].first + i));
      }
    }

    // 0xff bytes are NaN in bf16 and e4m3; every position up to a sequence's last gets a value.
    const size_t element = pc.fp8_cache ? 1 : 2;
    const int64_t slots = sequences * stride * P;
    std::vector<uint8_t> keys(static_cast<size_t>(slots * kv_dim) * element, 0xff), values(keys.size(), 0xff);
    const auto put = [&](std::vector<uint8_t>& cache, int64_t i, float v, float scale) {
      if (pc.fp8_cache) {
        cache[static_cast<size_t>(i)] = f32_to_f8e4m3(v / scale);
      } else {
        const uint16_t b = f32_to_bf16(v);
        std::memcpy(&cache[static_cast<size_t>(i) * 2], &b, 2);
      }
    };
    for (int64_t s = 0; s < sequences; ++s) {
      const auto& [start, count] = kSlices[static_cast<size_t>(s)];
      for (int64_t pos = 0; pos < start + count; ++pos) {
        const int64_t slot = tables[static_cast<size_t>(s * stride + pos / P)] * P + pos % P;
        for (int64_t j = 0; j < kv_dim; ++j) {
          put(keys, slot * kv_dim + j, normal(rng), kKeyScale);
          put(values, slot * kv_dim + j, normal(rng), kValueScale);
        }
      }
    }
    std::vector<float> q(static_cast<size_t>(n * q_stride));
    for (float& v : q) v = normal(rng);

    const DeviceBuffer q_d = to_device(q), k_d = to_device(keys), v_d = to_device(values), t_d = to_device(tables),
                       s_d = to_device(sequence), p_d = to_device(position);
    const std::vector<int32_t> paged_tiles = tiles_of(cuda::attention_tile_tokens(pc.heads, pc.kv_heads));
    const std::vector<int32_t> mma_tiles = tiles_of(cuda::prefill_attention_tile_tokens(pc.heads, pc.kv_heads));
    const DeviceBuffer paged_tiles_d = to_device(paged_tiles), mma_tiles_d = to_device(mma_tiles);
    const float out_scale = 0.05f;
    const size_t out_count = static_cast<size_t>(n * q_dim);
    DeviceBuffer want_d(out_count * (pc.fp8_out ? 1 : 2), "paged attention output");
    DeviceBuffer got_d(want_d.bytes(), "prefill attention output");
    KILN_CUDA_CHECK(cudaMemset(want_d.get(), 0xff, want_d.bytes()));
    KILN_CUDA_CHECK(cudaMemset(got_d.get(), 0xff, got_d.bytes()));

    cuda::AttentionArgs a;
    a.q = q_d.get<float>();
    a.q_stride = q_stride;
    a.kv = {k_d.get(), v_d.get(), pc.fp8_cache ? DType::F8E4M3 : DType::BF16, pc.fp8_cache ? kKeyScale : 1.0f,
            pc.fp8_cache ? kValueScale : 1.0f};
    a.step.tokens = n;
    a.step.token_sequence = s_d.get<int32_t>();
    a.step.token_position = p_d.get<int32_t>();
    a.step.block_tables = t_d.get<int32_t>();
    a.step.table_stride = stride;
    a.step.page_size = P;
    a.step.heads = pc.heads;
    a.step.kv_heads = pc.kv_heads;
    a.step.head_dim = D;
    a.window = pc.window;
    a.scale = 1.0f / std::sqrt(static_cast<float>(D));
    a.out_scale = out_scale;
    cuda::AttentionArgs paged = a;
    paged.tiles = paged_tiles_d.get<int32_t>();
    paged.num_tiles = static_cast<int64_t>(paged_tiles.size() / 2);
    if (pc.fp8_out) paged.out_fp8 = want_d.get<cuda::fp8>();
    else paged.out = want_d.get<cuda::bf16>();
    cuda::AttentionArgs mma = a;
    mma.tiles = mma_tiles_d.get<int32_t>();
    mma.num_tiles = static_cast<int64_t>(mma_tiles.size() / 2);
    if (pc.fp8_out) mma.out_fp8 = got_d.get<cuda::fp8>();
    else mma.out = got_d.get<cuda::bf16>();
    cuda::paged_attention(paged, nullptr);
    cuda::prefill_attention(mma, nullptr);
    const std::vector<float> want = read_output(want_d, out_count, pc.fp8_out, out_scale);
    const std::vector<float> got = read_output(got_d, out_count, pc.fp8_out, out_scale);
    for (size_t i = 0; i < out_count; ++i) {
      ASSERT_TRUE(std::isfinite(want[i])) << "paged attention element " << i << " not finite";
      ASSERT_TRUE(std::isfinite(got[i])) << "element " << i << " not written (or NaN)";
    }

    // Tolerances: paged_attention keeps q·scale and the softmax weights P in fp32; this kernel rounds
    // both to bf16 (at most 2^-8 relative each, about 2^-9 typically) for the MMAs. A score then moves
    // by about 2^-9 of scale·sqrt(sum q_i² k_i²) (~2^-9 for these N(0, 1) inputs), so each weight by
    // about 2^-9 relative, and an output (a weighted mean of values) by a few 2^-9 of its row's
    // magnitude; both sides then round to bf16 (2^-9 again). Per (token, head) row 3e-2 leaves
    // several times that, while a dropped or extra key, a wrong row or head
    // moves a row by 1/length of the context or more (0.3% for the longest, 377 keys, on average,
    // but whole rows for the short ones: the decode token at position 5, a fresh prompt's first
    // tokens). An e4m3 output has 3 mantissa bits: the two kernels' values round to neighbouring
    // e4m3 steps (2^-3 relative) wherever they straddle a rounding boundary.
    EXPECT_LT(relative_norm_error(got, want), pc.fp8_out ? 6e-2 : 1e-2);
    const double row_tolerance = pc.fp8_out ? 0.2 : 3e-2;
    double worst = 0.0;
    int64_t worst_row = -1;
    for (int64_t row = 0; row < n * pc.heads; ++row) {
      const std::vector<float> g(got.begin() + row * D, got.begin() + (row + 1) * D);
      const std::vector<float> w(want.begin() + row * D, want.begin() + (row + 1) * D);
      const double e = relative_norm_error(g, w);
      if (!(e <= worst)) {
        worst = e;
        worst_row = row;
      }
    }
    EXPECT_LE(worst, row_tolerance) << "token " << worst_row / pc.heads << " head " << worst_row % pc.heads;
  }
}

TEST(CudaPrefillAttention, RefusesWhatItDoesNotRun) {
  cuda::AttentionArgs a;
  a.step.heads = 4;
  a.step.kv_heads = 4;
  a.step.head_dim = 32;
  try {
    cuda::prefill_attention(a, nullptr);
    FAIL() << "head_dim 32 accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("head_dim 32"), std::string::npos) << e.what();
  }
  a.step.head_dim = 128;
  a.splits = 2;
  EXPECT_THROW(cuda::prefill_attention(a, nullptr), Error);
}

// Logits of two rows of one mixed step: a 1280-token prompt (160 of paged_attention's 8-token tiles
// times 2 KV heads: past twice the 132 multiprocessors of an H100/H200, so the step runs unsplit and
// the switch takes prefill_attention) and the decode token of a sequence with 300 cached positions.
std::vector<float> mixed_step_logits(const std::string& engine_path, bool prefill_mma, int64_t vocab) {
  if (!prefill_mma) setenv("KILN_CUDA_PREFILL_MMA", "0", 1);  // read once, by the constructor
  cuda::CudaModel model(Engine::load(engine_path));
  unsetenv("KILN_CUDA_PREFILL_MMA");
  auto cache = model.new_cache(128, 16);
  std::vector<int32_t> pages(128);
  std::iota(pages.begin(), pages.end(), 0);
  std::shuffle(pages.begin(), pages.end(), std::mt19937(3));
  const int32_t* long_table = pages.data();
  const int32_t* short_table = pages.data() + 96;
  std::vector<int32_t> prompt(1280), prefix(301);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>((i * 37 + 11) % vocab);
  for (size_t i = 0; i < prefix.size(); ++i) prefix[i] = static_cast<int32_t>((i * 13 + 5) % vocab);
  int32_t next[2];
  ForwardBatch first;
  first.add(prefix.data(), 300, 0, short_table, false);
  model.forward(first, cache, next);
  ForwardBatch mixed;
  mixed.add(prompt.data(), 1280, 0, long_table, true);
  mixed.add(&prefix[300], 1, 300, short_table, true);
  std::vector<float> logits(static_cast<size_t>(2 * vocab));
  model.forward(mixed, cache, next, logits.data());
  return logits;
}

TEST(CudaPrefillAttention, TheModelKeepsItsLogitsWithOrWithoutIt) {
  SKIP_WITHOUT_GPU();
  const TinySpec spec = cuda_tiny_spec();  // head_dim 64, the smallest prefill_attention takes
  BuildOptions o = cuda_build_options(write_tiny_checkpoint("cuda_prefill_mma", spec));
  o.max_seq_len = 2048;
  const std::string engine = build_cuda_engine(o);
  const std::vector<float> off = mixed_step_logits(engine, false, spec.vocab);
  const std::vector<float> on = mixed_step_logits(engine, true, spec.vocab);
  // The kernels differ by the bf16 rounding of q and P (about 1e-2 of an attention row at most, see
  // above), carried through two layers; the bf16 engine's bound against the double reference is 2e-2.
  double err = 0, scale = 0;
  for (size_t i = 0; i < off.size(); ++i) {
    err = std::max(err, static_cast<double>(std::fabs(on[i] - off[i])));
    scale = std::max(scale, static_cast<double>(std::fabs(off[i])));
  }
  EXPECT_LT(err / scale, 2e-2);
  EXPECT_NE(on, off) << "bit-identical logits: the switch did not take prefill_attention";
}

}  // namespace
}  // namespace kiln::test
