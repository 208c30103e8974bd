// The CPU paged attention kernel on its own: where a sequence's pages lie does not change a bit of
// the output, a mixed batch equals each sequence alone, and the values match a plain softmax
// attention in double precision (with and without a sliding window, fp32 and bf16 caches).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "backend/cpu/paged_attention.h"
#include "runtime/kv_cache.h"

namespace kiln::test {
namespace {

constexpr int64_t kHeads = 4, kKvHeads = 2, kHeadDim = 8, kPage = 4, kPages = 32;
constexpr int64_t kKvDim = kKvHeads * kHeadDim;

struct Sequence {
  int64_t length;
  std::vector<float> q, k, v;  // [length, heads * head_dim], [length, kv_dim] x 2
  std::vector<int32_t> table;
};

Sequence random_sequence(int64_t length, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1, 1);
  Sequence s{length, std::vector<float>(static_cast<size_t>(length * kHeads * kHeadDim)),
             std::vector<float>(static_cast<size_t>(length * kKvDim)), std::vector<float>(static_cast<size_t>(length * kKvDim)), {}};
  for (auto* v : {&s.q, &s.k, &s.v}) {
    for (float& x : *v) x = u(rng);
  }
  return s;
}

// Runs every query of `seqs` (all positions) as one batch; returns [tokens, heads * head_dim].
std::vector<float> run(std::vector<Sequence>& seqs, DType dtype, int64_t window) {
  KvCache cache(1, kPages, kPage, kKvDim, dtype);
  std::vector<float> q;
  std::vector<int32_t> token_sequence;
  std::vector<int64_t> token_position;
  std::vector<const int32_t*> tables;
  for (size_t s = 0; s < seqs.size(); ++s) {
    Sequence& seq = seqs[s];
    tables.push_back(seq.table.data());
    for (int64_t p = 0; p < seq.length; ++p) {
      cache.write(0, seq.table[static_cast<size_t>(p / kPage)], p % kPage, &seq.k[static_cast<size_t>(p * kKvDim)],
                  &seq.v[static_cast<size_t>(p * kKvDim)]);
      q.insert(q.end(), seq.q.begin() + p * kHeads * kHeadDim, seq.q.begin() + (p + 1) * kHeads * kHeadDim);
      token_sequence.push_back(static_cast<int32_t>(s));
      token_position.push_back(p);
    }
  }
  std::vector<float> out(q.size());
  PagedAttentionArgs a;
  a.q = q.data();
  a.q_stride = kHeads * kHeadDim;
  a.tokens = static_cast<int64_t>(token_position.size());
  a.token_sequence = token_sequence.data();
  a.token_position = token_position.data();
  a.block_tables = tables.data();
  a.keys = cache.layer_keys(0);
  a.values = cache.layer_values(0);
  a.kv_dtype = dtype;
  a.page_size = kPage;
  a.heads = kHeads;
  a.kv_heads = kKvHeads;
  a.head_dim = kHeadDim;
  a.window = window;
  a.scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  a.out = out.data();
  ThreadPool pool(2);
  paged_attention(a, pool);
  return out;
}

double reference(const Sequence& s, int64_t pos, int64_t h, int64_t d, int64_t window) {
  const int64_t kv = h / (kHeads / kKvHeads);
  const int64_t first = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
  std::vector<double> w;
  for (int64_t j = first; j <= pos; ++j) {
    double dot = 0;
    for (int64_t e = 0; e < kHeadDim; ++e) {
      dot += static_cast<double>(s.q[static_cast<size_t>(pos * kHeads * kHeadDim + h * kHeadDim + e)]) *
             s.k[static_cast<size_t>(j * kKvDim + kv * kHeadDim + e)];
    }
    w.push_back(dot / std::sqrt(static_cast<double>(kHeadDim)));
  }
  const double m = *std::max_element(w.begin(), w.end());
  double total = 0, acc = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    const double p = std::exp(w[i] - m);
    total += p;
    acc += p * s.v[static_cast<size_t>((first + static_cast<int64_t>(i)) * kKvDim + kv * kHeadDim + d)];
  }
  return acc / total;
}

std::vector<int32_t> pages(std::initializer_list<int32_t> ids) { return ids; }

TEST(PagedAttention, PagePlacementAndBatchCompanyDoNotChangeABit) {
  std::mt19937 rng(3);
  Sequence a = random_sequence(5, rng), b = random_sequence(37, rng);
  a.table = pages({0, 1});
  b.table.resize(10);
  std::iota(b.table.begin(), b.table.end(), 2);
  std::vector<Sequence> together{a, b};
  const std::vector<float> in_order = run(together, DType::F32, 0);
  // The same sequences on scattered pages, b first.
  Sequence a2 = a, b2 = b;
  a2.table = pages({31, 7});
  b2.table = pages({20, 3, 25, 9, 14, 30, 1, 18, 11, 27});
  std::vector<Sequence> scattered{b2, a2};
  const std::vector<float> shuffled = run(scattered, DType::F32, 0);
  std::vector<Sequence> alone{b};
  const std::vector<float> b_alone = run(alone, DType::F32, 0);
  const size_t a_rows = static_cast<size_t>(5 * kHeads * kHeadDim);
  // in_order = [a, b]; shuffled = [b, a]
  EXPECT_TRUE(std::equal(in_order.begin(), in_order.begin() + a_rows, shuffled.end() - a_rows));
  EXPECT_TRUE(std::equal(in_order.begin() + a_rows, in_order.end(), shuffled.begin()));
  EXPECT_TRUE(std::equal(b_alone.begin(), b_alone.end(), in_order.begin() + a_rows));
}

TEST(PagedAttention, MatchesSoftmaxAttentionInDoublePrecision) {
  for (const int64_t window : {0, 6}) {
    SCOPED_TRACE(window);
    std::mt19937 rng(5);
    Sequence s = random_sequence(23, rng);
    s.table = pages({4, 0, 9, 2, 7, 5});
    std::vector<Sequence> batch{s};
    const std::vector<float> got = run(batch, DType::F32, window);
    std::vector<float> got_bf16 = run(batch, DType::BF16, window);
    double err = 0, err_bf16 = 0;
    for (int64_t p = 0; p < s.length; ++p) {
      for (int64_t h = 0; h < kHeads; ++h) {
        for (int64_t d = 0; d < kHeadDim; ++d) {
          const double want = reference(s, p, h, d, window);
          const size_t i = static_cast<size_t>(p * kHeads * kHeadDim + h * kHeadDim + d);
          err = std::max(err, std::fabs(got[i] - want));
          err_bf16 = std::max(err_bf16, std::fabs(got_bf16[i] - want));
        }
      }
    }
    EXPECT_LT(err, 1e-5);
    EXPECT_LT(err_bf16, 2e-2);  // keys and values rounded to 8 mantissa bits
    EXPECT_GT(err_bf16, 0.0);   // and the bf16 cache really rounds
  }
}

}  // namespace
}  // namespace kiln::test
