// The KV page allocator: exact accounting, prefix sharing, eviction order and no leaks.
#include <gtest/gtest.h>

#include <random>

#include "core/error.h"
#include "runtime/block_manager.h"

namespace kiln::test {
namespace {

std::vector<int32_t> iota_tokens(int64_t n, int32_t first = 0) {
  std::vector<int32_t> t;
  for (int64_t i = 0; i < n; ++i) t.push_back(first + static_cast<int32_t>(i));
  return t;
}

TEST(BlockManager, GrowsTablesPageByPageAndRefusesWhatIsNotThere) {
  BlockManager b(4, 16);
  std::vector<int32_t> t;
  EXPECT_TRUE(b.grow(t, 1));
  EXPECT_EQ(t.size(), 1u);
  EXPECT_TRUE(b.grow(t, 16));
  EXPECT_EQ(t.size(), 1u);  // still within the first page
  EXPECT_TRUE(b.grow(t, 17));
  EXPECT_EQ(t.size(), 2u);
  std::vector<int32_t> u;
  EXPECT_FALSE(b.grow(u, 3 * 16));  // 3 pages asked, 2 left: nothing is taken
  EXPECT_TRUE(u.empty());
  EXPECT_EQ(b.used_pages(), 2);
  EXPECT_EQ(b.free_pages(), 2);
  b.release(t);
  EXPECT_TRUE(t.empty());
  EXPECT_EQ(b.used_pages(), 0);
  EXPECT_EQ(b.free_pages(), 4);
  b.audit();
}

TEST(BlockManager, SharedPrefixPagesAreCountedOnceAndReusedAfterRelease) {
  BlockManager b(16, 4);
  const std::vector<int32_t> system = iota_tokens(12, 100);  // 3 full pages
  std::vector<int32_t> first_tokens = system;
  first_tokens.insert(first_tokens.end(), {1, 2, 3});
  std::vector<int32_t> first;
  ASSERT_EQ(b.share_cached_prefix(first, first_tokens, 14), 0);
  ASSERT_TRUE(b.grow(first, 15));
  int64_t published = 0;
  b.publish_full_pages(first, first_tokens, 15, published);
  EXPECT_EQ(published, 3);
  EXPECT_EQ(b.used_pages(), 4);

  // A second request with the same system prompt shares its three pages while the first still runs.
  std::vector<int32_t> second_tokens = system;
  second_tokens.insert(second_tokens.end(), {7, 8, 9, 10, 11});
  std::vector<int32_t> second;
  EXPECT_EQ(b.share_cached_prefix(second, second_tokens, 16), 12);
  EXPECT_EQ(std::vector<int32_t>(first.begin(), first.begin() + 3), second);
  ASSERT_TRUE(b.grow(second, 17));
  EXPECT_EQ(b.used_pages(), 4 + 2);  // shared pages once, plus each request's own tail
  b.audit();

  // After both finish the prefix pages stay cached (not free) and a third request still hits them.
  b.release(first);
  b.release(second);
  EXPECT_EQ(b.used_pages(), 0);
  EXPECT_EQ(b.cached_pages(), 3);
  EXPECT_EQ(b.free_pages(), 13);
  std::vector<int32_t> third;
  EXPECT_EQ(b.share_cached_prefix(third, system, 11), 8);  // at most `limit` tokens: two full pages
  EXPECT_EQ(b.cached_pages(), 1);
  b.release(third);
  b.audit();
}

TEST(BlockManager, APrefixMatchesOnlyWhenEveryEarlierPageMatches) {
  BlockManager b(8, 2);
  const std::vector<int32_t> a{1, 2, 3, 4};
  std::vector<int32_t> t;
  ASSERT_TRUE(b.grow(t, 4));
  int64_t published = 0;
  b.publish_full_pages(t, a, 4, published);
  b.release(t);
  // Same second page, different first page: the chain differs, nothing is shared.
  std::vector<int32_t> u;
  EXPECT_EQ(b.share_cached_prefix(u, {9, 9, 3, 4, 5}, 4), 0);
  EXPECT_TRUE(u.empty());
  EXPECT_EQ(b.share_cached_prefix(u, {1, 2, 3, 5, 5}, 4), 2);
  b.release(u);
  b.audit();
}

TEST(BlockManager, EvictsTheCachedPageReleasedLongestAgoOnlyWhenNoFreePageIsLeft) {
  BlockManager b(3, 1);
  std::vector<int32_t> x, y;
  ASSERT_TRUE(b.grow(x, 1));
  ASSERT_TRUE(b.grow(y, 1));
  int64_t px = 0, py = 0;
  b.publish_full_pages(x, {5}, 1, px);
  b.publish_full_pages(y, {6}, 1, py);
  b.release(x);  // released first: evicted first
  b.release(y);
  EXPECT_EQ(b.cached_pages(), 2);
  std::vector<int32_t> z;
  ASSERT_TRUE(b.grow(z, 1));  // takes the free page, keeps both cached ones
  EXPECT_EQ(b.cached_pages(), 2);
  std::vector<int32_t> w;
  ASSERT_TRUE(b.grow(w, 1));  // evicts {5}
  EXPECT_EQ(b.cached_pages(), 1);
  std::vector<int32_t> probe;
  EXPECT_EQ(b.share_cached_prefix(probe, {5, 0}, 1), 0);
  EXPECT_EQ(b.share_cached_prefix(probe, {6, 0}, 1), 1);
  b.release(probe);
  b.release(z);
  b.release(w);
  b.audit();
}

TEST(BlockManager, IdenticalPromptsComputedSideBySideKeepOneCachedCopy) {
  BlockManager b(8, 2);
  const std::vector<int32_t> p{4, 4, 4, 4, 1};
  std::vector<int32_t> x, y;
  ASSERT_TRUE(b.grow(x, 5));
  ASSERT_TRUE(b.grow(y, 5));
  int64_t px = 0, py = 0;
  b.publish_full_pages(x, p, 5, px);
  b.publish_full_pages(y, p, 5, py);
  b.release(x);
  b.release(y);
  EXPECT_EQ(b.cached_pages(), 2);
  EXPECT_EQ(b.free_pages(), 6);
  b.audit();
}

TEST(BlockManager, NoPageLeaksAfterThousandsOfRandomAdmitFinishCancelCycles) {
  BlockManager b(64, 4);
  std::mt19937 rng(1234);
  struct Live {
    std::vector<int32_t> tokens, table;
    int64_t computed = 0, published = 0;
  };
  std::vector<Live> live;
  // A few shared system prompts make prefix hits, evictions and duplicates all happen.
  const std::vector<std::vector<int32_t>> systems{iota_tokens(8, 0), iota_tokens(12, 50), iota_tokens(5, 90)};
  int64_t hits = 0;
  for (int cycle = 0; cycle < 5000; ++cycle) {
    const int action = static_cast<int>(rng() % 3);
    if (action == 0 || live.empty()) {  // admit
      Live l;
      l.tokens = systems[rng() % systems.size()];
      for (int i = static_cast<int>(rng() % 12); i >= 0; --i) l.tokens.push_back(static_cast<int32_t>(rng() % 7));
      const auto total = static_cast<int64_t>(l.tokens.size());
      l.computed = b.share_cached_prefix(l.table, l.tokens, total - 1);
      l.published = static_cast<int64_t>(l.table.size());
      hits += l.computed;
      if (!b.grow(l.table, total)) {
        b.release(l.table);
        continue;
      }
      l.computed = total;
      b.publish_full_pages(l.table, l.tokens, l.computed, l.published);
      live.push_back(std::move(l));
    } else if (action == 1) {  // decode one more token into a live sequence
      Live& l = live[rng() % live.size()];
      l.tokens.push_back(static_cast<int32_t>(rng() % 7));
      if (b.grow(l.table, static_cast<int64_t>(l.tokens.size()))) {
        l.computed = static_cast<int64_t>(l.tokens.size());
        b.publish_full_pages(l.table, l.tokens, l.computed, l.published);
      } else {
        l.tokens.pop_back();
      }
    } else {  // finish or cancel: both just release
      const size_t i = rng() % live.size();
      b.release(live[i].table);
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
    }
    if (cycle % 97 == 0) b.audit();
    ASSERT_EQ(b.used_pages() + b.cached_pages() + b.free_pages(), b.total_pages());
  }
  for (Live& l : live) b.release(l.table);
  b.audit();
  EXPECT_EQ(b.used_pages(), 0);
  EXPECT_EQ(b.cached_pages() + b.free_pages(), 64);
  EXPECT_GT(hits, 0);
  EXPECT_GT(b.prefix_hit_tokens(), 0);
}

TEST(BlockManager, ReleasingATableTwiceIsCaught) {
  BlockManager b(2, 2);
  std::vector<int32_t> t;
  ASSERT_TRUE(b.grow(t, 2));
  std::vector<int32_t> copy = t;
  b.release(t);
  EXPECT_THROW(b.release(copy), Error);
}

}  // namespace
}  // namespace kiln::test
