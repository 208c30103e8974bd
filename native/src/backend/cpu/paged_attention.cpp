#include "backend/cpu/paged_attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace kiln {

namespace {

// A row of head_dim values as fp32: f32 rows are used in place, bf16 rows are widened into `buf`.
const float* row_f32(const PagedAttentionArgs& a, const uint8_t* base, int64_t row, int64_t offset, float* buf) {
  const int64_t kv_dim = a.kv_heads * a.head_dim;
  if (a.kv_dtype == DType::F32) return reinterpret_cast<const float*>(base) + row * kv_dim + offset;
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(base) + row * kv_dim + offset;
  for (int64_t d = 0; d < a.head_dim; ++d) buf[d] = bf16_to_f32(bits[d]);
  return buf;
}

// One query token `t`, head `h`: softmax over its sequence's positions, read through the block table.
void attend(const PagedAttentionArgs& a, int64_t t, int64_t h) {
  const int64_t group = a.heads / a.kv_heads;
  const int64_t pos = a.token_position[t];
  const int32_t* table = a.block_tables[a.token_sequence[t]];
  const int64_t first = a.window > 0 ? std::max<int64_t>(0, pos - a.window + 1) : 0;
  const float* q = a.q + t * a.q_stride + h * a.head_dim;
  const int64_t kv_offset = (h / group) * a.head_dim;
  thread_local std::vector<float> scores;
  thread_local std::vector<float> widened;
  scores.resize(static_cast<size_t>(pos - first + 1));
  widened.resize(static_cast<size_t>(a.head_dim));
  const auto row_of = [&](int64_t j) { return table[j / a.page_size] * a.page_size + j % a.page_size; };

  float max_score = -INFINITY;
  for (int64_t j = first; j <= pos; ++j) {
    const float* k = row_f32(a, a.keys, row_of(j), kv_offset, widened.data());
    float dot = 0.0f;
    for (int64_t d = 0; d < a.head_dim; ++d) dot += q[d] * k[d];
    const float s = dot * a.scale;
    scores[static_cast<size_t>(j - first)] = s;
    max_score = std::max(max_score, s);
  }
  float total = 0.0f;
  for (float& s : scores) {
    s = std::exp(s - max_score);
    total += s;
  }
  float* out = a.out + t * a.heads * a.head_dim + h * a.head_dim;
  std::fill(out, out + a.head_dim, 0.0f);
  for (int64_t j = first; j <= pos; ++j) {
    const float p = scores[static_cast<size_t>(j - first)] / total;
    const float* v = row_f32(a, a.values, row_of(j), kv_offset, widened.data());
    for (int64_t d = 0; d < a.head_dim; ++d) out[d] += p * v[d];
  }
}

}  // namespace

void paged_attention(const PagedAttentionArgs& a, ThreadPool& pool) {
  const int64_t tasks = a.tokens * a.heads;
  // A task (one query row of one head) is small, so tasks go to the pool in contiguous runs: a few
  // runs per thread balance the load without paying the pool's hand-off for every task.
  const int64_t runs = std::min<int64_t>(tasks, static_cast<int64_t>(pool.size()) * 8);
  pool.run(static_cast<int>(runs), pool.size(), [&](int run) {
    for (int64_t task = run * tasks / runs; task < (run + 1) * tasks / runs; ++task) attend(a, task / a.heads, task % a.heads);
  });
}

}  // namespace kiln
