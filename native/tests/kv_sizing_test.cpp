// KV cache sizing: which option wins, how a fraction of the backend's memory becomes pages, and the
// errors that name what decided a count too small to serve.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/error.h"
#include "runtime/kv_sizing.h"

namespace kiln::test {
namespace {

KvMemoryBudget gpu_like(int64_t available) {
  KvMemoryBudget b;
  b.available_bytes = available;
  b.available_what = "free GPU memory after weights and scratch";
  b.default_fraction = 0.9;
  return b;
}

KvMemoryBudget cpu_like(int64_t available, int64_t room) {
  KvMemoryBudget b;
  b.available_bytes = available;
  b.available_what = "host memory less the engine file";
  b.default_pages = room;
  b.default_what = "room for the batch";
  b.fraction_cap_pages = room;
  return b;
}

std::string message_of(const KvSizingOptions& o, const KvMemoryBudget& b, int64_t page_bytes, int64_t min_pages) {
  try {
    size_kv_cache(o, b, page_bytes, min_pages);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(KvSizing, APageHoldsKeysAndValuesOfEveryLayer) {
  EXPECT_EQ(kv_page_bytes(16, 16, 512, DType::BF16), 2 * 16 * 16 * 512 * 2);
  EXPECT_EQ(kv_page_bytes(4, 8, 64, DType::F32), 2 * 4 * 8 * 64 * 4);
}

TEST(KvSizing, AnExplicitPageCountWinsOverBytesAndFraction) {
  const KvCacheSize s = size_kv_cache({100, 1 << 20, 0.5}, gpu_like(1LL << 34), 4096, 8);
  EXPECT_EQ(s.pages, 100);
  EXPECT_EQ(s.bytes, 100 * 4096);
  EXPECT_EQ(s.basis, "kvCachePages");
}

TEST(KvSizing, AByteBudgetIsRoundedDownToWholePagesAndWinsOverTheFraction) {
  const KvCacheSize s = size_kv_cache({0, 10 * 4096 + 4095, 0.5}, gpu_like(1LL << 34), 4096, 8);
  EXPECT_EQ(s.pages, 10);
  EXPECT_EQ(s.bytes, 10 * 4096);
}

TEST(KvSizing, AFractionTakesThatShareOfWhatTheBackendHasLeft) {
  const int64_t free_bytes = 80LL << 30;
  const KvCacheSize s = size_kv_cache({0, 0, 0.5}, gpu_like(free_bytes), 1 << 20, 8);
  EXPECT_EQ(s.pages, 40 * 1024);
  EXPECT_NE(s.basis.find("kvMemoryFraction 0.5 of 80.00 GiB free GPU memory"), std::string::npos) << s.basis;
  // No option: the GPU default of 0.9.
  EXPECT_EQ(size_kv_cache({}, gpu_like(free_bytes), 1 << 20, 8).pages, static_cast<int64_t>(0.9 * 80 * 1024));
}

TEST(KvSizing, OnTheCpuTheFractionIsCappedAtRoomForTheBatchWhichIsAlsoTheDefault) {
  EXPECT_EQ(size_kv_cache({0, 0, 0.9}, cpu_like(64LL << 30, 256), 4096, 8).pages, 256);
  EXPECT_EQ(size_kv_cache({}, cpu_like(64LL << 30, 256), 4096, 8).pages, 256);
  // A small machine: the fraction decides.
  EXPECT_EQ(size_kv_cache({0, 0, 0.5}, cpu_like(100 * 4096, 256), 4096, 8).pages, 50);
}

TEST(KvSizing, PageIdsStayWithinInt32) {
  EXPECT_EQ(size_kv_cache({0, 0, 1.0}, gpu_like(1LL << 50), 16, 8).pages, std::numeric_limits<int32_t>::max());
}

TEST(KvSizing, TooFewPagesForOneLongestSequenceNameWhatDecided) {
  const std::string fraction = message_of({0, 0, 0.01}, gpu_like(1 << 20), 4096, 8);
  EXPECT_NE(fraction.find("kvMemoryFraction 0.01"), std::string::npos) << fraction;
  EXPECT_NE(fraction.find("gives 2 pages"), std::string::npos) << fraction;
  EXPECT_NE(fraction.find("needs 8"), std::string::npos) << fraction;
  EXPECT_NE(message_of({4, 0, 0}, gpu_like(1 << 30), 4096, 8).find("kvCachePages gives 4 pages"), std::string::npos);
  EXPECT_NE(message_of({0, 4096, 0}, gpu_like(1 << 30), 4096, 8).find("kvCacheBytes 4096 gives 1 pages"), std::string::npos);
}

TEST(KvSizing, OutOfRangeOptionsAreRefusedNamingTheOption) {
  for (const double bad : {-0.5, 1.5, std::nan("")}) {
    SCOPED_TRACE(bad);
    try {
      check_kv_sizing_options({0, 0, bad});
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("kvMemoryFraction"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(check_kv_sizing_options({-1, 0, 0}), Error);
  EXPECT_THROW(check_kv_sizing_options({0, -1, 0}), Error);
  EXPECT_NO_THROW(check_kv_sizing_options({0, 0, 1.0}));
}

TEST(KvSizing, HostMemoryIsKnown) { EXPECT_GT(host_memory_bytes(), 0); }

}  // namespace
}  // namespace kiln::test
