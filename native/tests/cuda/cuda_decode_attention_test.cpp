// The fused decode attention kernel against RoPE + cache write + the CPU backend's paged attention:
// random unrotated qkv rows, bias, windows, GQA groups 1..8, head_dim 32/64/128, several split
// counts, bf16 and fp8 outputs, bf16 and fp8 (E4M3, scaled) caches; every output element written
// and the new keys and values in the cache. Each launch runs twice, so the split counters must be
// back at zero. Split launches take the cluster merge by default; test/gpu/device_check.sh runs this
// test a second time with KILN_CUDA_DECODE_CLUSTER=0 for the counter merge.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "backend/cuda/decode_attention.h"
#include "core/dtype.h"
#include "device_helpers.h"

namespace kiln::test {
namespace {

using cuda::DeviceBuffer;

struct DecodeCase {
  int64_t heads, kv_heads, head_dim, window;
  bool bias, fp8_out;
  bool fp8_cache = false;
};

// An fp8 cache's scales: powers of two either side of 1 (so quantizing is exact division, and a
// kernel that skips or inverts a scale is off by a factor of 4).
constexpr float kKeyScale = 0.5f, kValueScale = 2.0f;

// A cache of bf16 or e4m3 elements as bytes; e4m3 holds value / scale.
struct HostCache {
  bool fp8;
  float scale;
  std::vector<uint8_t> bytes;
  size_t element() const { return fp8 ? 1 : 2; }
  void put(int64_t i, float v) {
    if (fp8) {
      bytes[static_cast<size_t>(i)] = f32_to_f8e4m3(v / scale);
    } else {
      const uint16_t b = f32_to_bf16(v);
      std::memcpy(&bytes[static_cast<size_t>(i) * 2], &b, 2);
    }
  }
  float get(int64_t i) const {
    if (fp8) return f8e4m3_to_f32(bytes[static_cast<size_t>(i)]) * scale;
    uint16_t b;
    std::memcpy(&b, &bytes[static_cast<size_t>(i) * 2], 2);
    return bf16_to_f32(b);
  }
  std::vector<float> dequantized() const {
    std::vector<float> out(bytes.size() / element());
    for (size_t i = 0; i < out.size(); ++i) out[i] = get(static_cast<int64_t>(i));
    return out;
  }
};

TEST(CudaDecodeAttention, MatchesRopeCacheWriteAndTheCpuAttention) {
  SKIP_WITHOUT_GPU();
  const std::vector<DecodeCase> cases{{32, 8, 128, 0, false, false},      {8, 2, 64, 0, true, false},
                                      {4, 4, 32, 24, false, true},        {16, 2, 64, 100, true, false},
                                      {8, 4, 128, 5, false, true},        {32, 8, 128, 0, true, true},
                                      {32, 8, 128, 0, false, false, true}, {8, 2, 64, 0, true, true, true},
                                      {4, 4, 32, 24, false, false, true},  {16, 2, 64, 100, true, false, true}};
  for (const DecodeCase& dc : cases) {
    SCOPED_TRACE("heads " + std::to_string(dc.heads) + "/" + std::to_string(dc.kv_heads) + " dim " +
                 std::to_string(dc.head_dim) + " window " + std::to_string(dc.window) + (dc.fp8_out ? " fp8" : "") +
                 (dc.fp8_cache ? " fp8 cache" : ""));
    ASSERT_TRUE(cuda::decode_attention_supports(dc.heads, dc.kv_heads, dc.head_dim));
    std::mt19937 rng(static_cast<uint32_t>(dc.heads * 131 + dc.head_dim + dc.window));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_real_distribution<float> angle(-3.14159f, 3.14159f);
    const int64_t D = dc.head_dim, half = D / 2, P = 16, stride = 24, max_pos = stride * P;
    const int64_t kv_dim = dc.kv_heads * D, q_dim = dc.heads * D, width = q_dim + 2 * kv_dim;
    // Four sequences' decode tokens: the first position, inside a page, just past 8 key rounds, the last.
    const std::vector<int64_t> position{0, 17, 130, max_pos - 1};
    const auto n = static_cast<int64_t>(position.size());
    const int64_t pages = n * stride;
    std::vector<int32_t> ids(static_cast<size_t>(pages));
    for (int64_t i = 0; i < pages; ++i) ids[static_cast<size_t>(i)] = static_cast<int32_t>(i);
    std::shuffle(ids.begin(), ids.end(), rng);
    std::vector<const int32_t*> table_ptrs;
    std::vector<int32_t> sequence, position32;
    for (int64_t s = 0; s < n; ++s) {
      table_ptrs.push_back(ids.data() + s * stride);
      sequence.push_back(static_cast<int32_t>(s));
      position32.push_back(static_cast<int32_t>(position[static_cast<size_t>(s)]));
    }
    std::vector<float> qkv(static_cast<size_t>(n * width)), bias(static_cast<size_t>(width));
    for (float& v : qkv) v = normal(rng);
    for (float& v : bias) v = 0.5f * normal(rng);
    std::vector<float> cos(static_cast<size_t>(max_pos * half)), sin(cos.size());
    for (size_t i = 0; i < cos.size(); ++i) {
      const float a = angle(rng);
      cos[i] = std::cos(a);
      sin[i] = std::sin(a);
    }
    const int64_t cache_elements = pages * P * kv_dim;
    HostCache keys{dc.fp8_cache, dc.fp8_cache ? kKeyScale : 1.0f, {}};
    HostCache values{dc.fp8_cache, dc.fp8_cache ? kValueScale : 1.0f, {}};
    for (HostCache* c : {&keys, &values}) {
      c->bytes.resize(static_cast<size_t>(cache_elements) * c->element());
      for (int64_t i = 0; i < cache_elements; ++i) c->put(i, normal(rng));
    }

    // The reference: rotate (rotate_half), write k and v in the cache's dtype into the slot, attend
    // on the CPU over the cache as fp32 (dequantized).
    std::vector<float> q(static_cast<size_t>(n * q_dim));
    HostCache want_keys = keys, want_values = values;
    for (int64_t t = 0; t < n; ++t) {
      const int64_t pos = position[static_cast<size_t>(t)];
      const float* row = qkv.data() + t * width;
      const auto x = [&](int64_t i) { return row[i] + (dc.bias ? bias[static_cast<size_t>(i)] : 0.0f); };
      const int64_t slot = (table_ptrs[static_cast<size_t>(t)][pos / P] * P + pos % P) * kv_dim;
      for (int64_t head = 0; head < dc.heads + dc.kv_heads; ++head) {
        for (int64_t i = 0; i < half; ++i) {
          const int64_t at = head * D + i;
          const float c = cos[static_cast<size_t>(pos * half + i)], s = sin[static_cast<size_t>(pos * half + i)];
          const float r0 = x(at) * c - x(at + half) * s;
          const float r1 = x(at + half) * c + x(at) * s;
          if (head < dc.heads) {
            q[static_cast<size_t>(t * q_dim + at)] = r0;
            q[static_cast<size_t>(t * q_dim + at + half)] = r1;
          } else {
            want_keys.put(slot + at - q_dim, r0);
            want_keys.put(slot + at - q_dim + half, r1);
          }
        }
      }
      for (int64_t j = 0; j < kv_dim; ++j) want_values.put(slot + j, x(q_dim + kv_dim + j));
    }
    const std::vector<float> ref_keys = want_keys.dequantized(), ref_values = want_values.dequantized();
    const std::vector<float> want = cpu_attention(
        {&sequence, &position, &table_ptrs, P, dc.heads, dc.kv_heads, D, dc.window}, q, ref_keys, ref_values);

    const DeviceBuffer qkv_d = to_device(qkv), bias_d = to_device(bias), cos_d = to_device(cos), sin_d = to_device(sin),
                       t_d = to_device(ids), s_d = to_device(sequence), p_d = to_device(position32);
    const float out_scale = 0.05f;
    for (int64_t splits : {int64_t{1}, int64_t{3}, cuda::kMaxAttentionSplits}) {
      SCOPED_TRACE("splits " + std::to_string(splits));
      const DeviceBuffer k_d = to_device(keys.bytes), v_d = to_device(values.bytes);
      DeviceBuffer partials(static_cast<size_t>(n * dc.heads * splits * (D + 2)) * 4, "partials");
      DeviceBuffer counters(static_cast<size_t>(n * dc.kv_heads) * 4, "counters");
      KILN_CUDA_CHECK(cudaMemset(counters.get(), 0, counters.bytes()));
      const size_t out_bytes = static_cast<size_t>(n * q_dim) * (dc.fp8_out ? 1 : 2);
      DeviceBuffer out_d(out_bytes, "attention output");
      cuda::DecodeAttentionArgs a;
      a.qkv = qkv_d.get<float>();
      a.bias = dc.bias ? bias_d.get<float>() : nullptr;
      a.step.tokens = n;
      a.step.token_sequence = s_d.get<int32_t>();
      a.step.token_position = p_d.get<int32_t>();
      a.step.block_tables = t_d.get<int32_t>();
      a.step.table_stride = stride;
      a.cos = cos_d.get<float>();
      a.sin = sin_d.get<float>();
      a.kv = {k_d.get(), v_d.get(), dc.fp8_cache ? DType::F8E4M3 : DType::BF16, keys.scale, values.scale};
      a.step.page_size = P;
      a.step.heads = dc.heads;
      a.step.kv_heads = dc.kv_heads;
      a.step.head_dim = D;
      a.window = dc.window;
      a.scale = 1.0f / std::sqrt(static_cast<float>(D));
      if (dc.fp8_out) a.out_fp8 = out_d.get<cuda::fp8>();
      else a.out = out_d.get<cuda::bf16>();
      a.out_scale = out_scale;
      a.splits = splits;
      a.partials = partials.get<float>();
      a.counters = counters.get<int32_t>();
      for (int launch = 0; launch < 2; ++launch) {
        SCOPED_TRACE("launch " + std::to_string(launch));
        KILN_CUDA_CHECK(cudaMemset(out_d.get(), 0xff, out_d.bytes()));  // NaN (bf16 and e4m3): unwritten fails
        cuda::decode_attention(a, nullptr);
        std::vector<float> got(want.size());
        if (dc.fp8_out) {
          const auto raw = to_host<uint8_t>(out_d, want.size());
          decode_to_f32(DType::F8E4M3, raw.data(), got.data(), got.size());
          for (float& v : got) v *= out_scale;
        } else {
          const auto raw = to_host<uint16_t>(out_d, want.size());
          for (size_t i = 0; i < got.size(); ++i) got[i] = bf16_to_f32(raw[i]);
        }
        for (size_t i = 0; i < got.size(); ++i) ASSERT_TRUE(std::isfinite(got[i])) << "element " << i << " not written";
        // E4M3 keeps 3 mantissa bits: up to 1/16 relative per element. With an fp8 cache the new
        // token's key may sit one e4m3 step from the reference's (see the key check below).
        EXPECT_LT(relative_norm_error(got, want), dc.fp8_out ? 6e-2 : dc.fp8_cache ? 1e-2 : 5e-3);
        EXPECT_EQ(to_host<int32_t>(counters, static_cast<size_t>(n * dc.kv_heads)),
                  std::vector<int32_t>(static_cast<size_t>(n * dc.kv_heads), 0));
      }
      // Keys within a step of the cache's dtype from the reference (absolute where x·cos and y·sin
      // cancel): the host compiler may fuse the reference's rotation into fmas, the kernel rounds
      // each product. Values are copied (and divided by a power of two), so bit for bit.
      HostCache got_keys = keys;
      got_keys.bytes = to_host<uint8_t>(k_d, keys.bytes.size());
      const float rel_tol = dc.fp8_cache ? 0.13f : 1e-2f, abs_tol = dc.fp8_cache ? 0x1p-9f * kKeyScale : 1e-5f;
      size_t off = 0;
      for (int64_t i = 0; i < cache_elements; ++i) {
        const float g = got_keys.get(i), w = want_keys.get(i);
        off += std::fabs(g - w) > rel_tol * std::fabs(w) + abs_tol ? 1 : 0;
      }
      EXPECT_EQ(off, 0u) << "cached keys off the reference";
      EXPECT_EQ(to_host<uint8_t>(v_d, values.bytes.size()), want_values.bytes);
    }
  }
}

}  // namespace
}  // namespace kiln::test
