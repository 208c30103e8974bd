// The fused decode attention kernel against RoPE + cache write + the CPU backend's paged attention:
// random unrotated qkv rows, bias, windows, GQA groups 1..8, head_dim 32/64/128, several split
// counts, bf16 and fp8 outputs; every output element written and the new keys and values in the
// cache. Each launch runs twice, so the split counters must be back at zero.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "backend/cpu/paged_attention.h"
#include "backend/cuda/decode_attention.h"
#include "core/dtype.h"
#include "core/thread_pool.h"
#include "device_helpers.h"

namespace kiln::test {
namespace {

using cuda::DeviceBuffer;

struct DecodeCase {
  int64_t heads, kv_heads, head_dim, window;
  bool bias, fp8_out;
};

TEST(CudaDecodeAttention, MatchesRopeCacheWriteAndTheCpuAttention) {
  SKIP_WITHOUT_GPU();
  const std::vector<DecodeCase> cases{{32, 8, 128, 0, false, false}, {8, 2, 64, 0, true, false},
                                      {4, 4, 32, 24, false, true},   {16, 2, 64, 100, true, false},
                                      {8, 4, 128, 5, false, true},   {32, 8, 128, 0, true, true}};
  for (const DecodeCase& dc : cases) {
    SCOPED_TRACE("heads " + std::to_string(dc.heads) + "/" + std::to_string(dc.kv_heads) + " dim " +
                 std::to_string(dc.head_dim) + " window " + std::to_string(dc.window) + (dc.fp8_out ? " fp8" : ""));
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
    std::vector<uint16_t> keys(static_cast<size_t>(pages * P * kv_dim)), values(keys.size());
    for (auto& v : keys) v = f32_to_bf16(normal(rng));
    for (auto& v : values) v = f32_to_bf16(normal(rng));

    // The reference: rotate (rotate_half), write k and v as bf16 into the slot, attend on the CPU.
    std::vector<float> q(static_cast<size_t>(n * q_dim));
    std::vector<uint16_t> want_keys = keys, want_values = values;
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
            want_keys[static_cast<size_t>(slot + at - q_dim)] = f32_to_bf16(r0);
            want_keys[static_cast<size_t>(slot + at - q_dim + half)] = f32_to_bf16(r1);
          }
        }
      }
      for (int64_t j = 0; j < kv_dim; ++j) want_values[static_cast<size_t>(slot + j)] = f32_to_bf16(x(q_dim + kv_dim + j));
    }
    std::vector<float> want(static_cast<size_t>(n * q_dim));
    PagedAttentionArgs cpu;
    cpu.q = q.data();
    cpu.q_stride = q_dim;
    cpu.tokens = n;
    cpu.token_sequence = sequence.data();
    cpu.token_position = position.data();
    cpu.block_tables = table_ptrs.data();
    cpu.keys = reinterpret_cast<const uint8_t*>(want_keys.data());
    cpu.values = reinterpret_cast<const uint8_t*>(want_values.data());
    cpu.kv_dtype = DType::BF16;
    cpu.page_size = P;
    cpu.heads = dc.heads;
    cpu.kv_heads = dc.kv_heads;
    cpu.head_dim = D;
    cpu.window = dc.window;
    cpu.scale = 1.0f / std::sqrt(static_cast<float>(D));
    cpu.out = want.data();
    ThreadPool pool(2);
    paged_attention(cpu, pool);

    const DeviceBuffer qkv_d = to_device(qkv), bias_d = to_device(bias), cos_d = to_device(cos), sin_d = to_device(sin),
                       t_d = to_device(ids), s_d = to_device(sequence), p_d = to_device(position32);
    const float out_scale = 0.05f;
    for (int64_t splits : {int64_t{1}, int64_t{3}, cuda::kMaxAttentionSplits}) {
      SCOPED_TRACE("splits " + std::to_string(splits));
      const DeviceBuffer k_d = to_device(keys), v_d = to_device(values);
      DeviceBuffer partials(static_cast<size_t>(n * dc.heads * splits * (D + 2)) * 4, "partials");
      DeviceBuffer counters(static_cast<size_t>(n * dc.kv_heads) * 4, "counters");
      KILN_CUDA_CHECK(cudaMemset(counters.get(), 0, counters.bytes()));
      const size_t out_bytes = static_cast<size_t>(n * q_dim) * (dc.fp8_out ? 1 : 2);
      DeviceBuffer out_d(out_bytes, "attention output");
      cuda::DecodeAttentionArgs a;
      a.qkv = qkv_d.get<float>();
      a.bias = dc.bias ? bias_d.get<float>() : nullptr;
      a.tokens = n;
      a.token_sequence = s_d.get<int32_t>();
      a.token_position = p_d.get<int32_t>();
      a.block_tables = t_d.get<int32_t>();
      a.table_stride = stride;
      a.cos = cos_d.get<float>();
      a.sin = sin_d.get<float>();
      a.keys = k_d.get<cuda::bf16>();
      a.values = v_d.get<cuda::bf16>();
      a.page_size = P;
      a.heads = dc.heads;
      a.kv_heads = dc.kv_heads;
      a.head_dim = D;
      a.window = dc.window;
      a.scale = cpu.scale;
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
        // E4M3 keeps 3 mantissa bits: up to 1/16 relative per element.
        EXPECT_LT(relative_norm_error(got, want), dc.fp8_out ? 6e-2 : 5e-3);
        EXPECT_EQ(to_host<int32_t>(counters, static_cast<size_t>(n * dc.kv_heads)),
                  std::vector<int32_t>(static_cast<size_t>(n * dc.kv_heads), 0));
      }
      // Keys within a bf16 step of the reference (absolute where x·cos and y·sin cancel): the host
      // compiler may fuse the reference's rotation into fmas, the kernel rounds each product. Values
      // are copied, so bit for bit.
      const auto got_keys = to_host<uint16_t>(k_d, keys.size());
      size_t off = 0;
      for (size_t i = 0; i < got_keys.size(); ++i) {
        const float g = bf16_to_f32(got_keys[i]), w = bf16_to_f32(want_keys[i]);
        off += std::fabs(g - w) > 1e-2f * std::fabs(w) + 1e-5f ? 1 : 0;
      }
      EXPECT_EQ(off, 0u) << "cached keys off the reference";
      EXPECT_EQ(to_host<uint16_t>(v_d, values.size()), want_values);
    }
  }
}

}  // namespace
}  // namespace kiln::test
