// for_chunks (core/thread_pool.h): the chunked loops of the build's conversions.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "core/thread_pool.h"

namespace kiln {
namespace {

TEST(ThreadPool, ForChunksVisitsEveryIndexOnceWithAndWithoutAPool) {
  ThreadPool pool(3);
  for (size_t count : {size_t{0}, size_t{1}, size_t{99}, size_t{100}, size_t{101}, size_t{1003}}) {
    for (ThreadPool* p : {static_cast<ThreadPool*>(nullptr), &pool}) {
      std::vector<int> seen(count, 0);
      for_chunks(p, count, 100, [&](size_t begin, size_t end) {
        for (size_t i = begin; i < end; ++i) ++seen[i];
      });
      EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), static_cast<std::ptrdiff_t>(count)) << count;
    }
  }
}

}  // namespace
}  // namespace kiln
