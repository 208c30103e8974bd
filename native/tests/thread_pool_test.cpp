// The thread pool's size by default (core/cpu_budget.h: the CPUs a pod may use, not the node's) and
// for_chunks (core/thread_pool.h): the chunked loops of the build's conversions.
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include <thread>

#include "core/cpu_budget.h"
#include "core/thread_pool.h"

namespace kiln {
namespace {

TEST(CpuBudget, ReadsACgroupQuotaRoundedUpAndNoQuotaAsNone) {
  EXPECT_EQ(cpus_of_cgroup_v2("max 100000\n"), std::nullopt);
  EXPECT_EQ(cpus_of_cgroup_v2("400000 100000\n"), 4);
  EXPECT_EQ(cpus_of_cgroup_v2("150000 100000"), 2);  // 1.5 CPUs: two threads, each busy part time
  EXPECT_EQ(cpus_of_cgroup_v2("50000 100000"), 1);
  EXPECT_EQ(cpus_of_cgroup_v2(""), std::nullopt);  // no such file: not in a cgroup v2 with a cpu controller
  EXPECT_EQ(cpus_of_cgroup_v2("garbage"), std::nullopt);
  EXPECT_EQ(cpus_of_cgroup_v1("-1\n", "100000\n"), std::nullopt);
  EXPECT_EQ(cpus_of_cgroup_v1("800000\n", "100000\n"), 8);
  EXPECT_EQ(cpus_of_cgroup_v1("", ""), std::nullopt);
}

TEST(CpuBudget, IsAtLeastOneAndAtMostTheMachinesCpus) {
  const int cpus = cpu_budget();
  EXPECT_GE(cpus, 1);
  EXPECT_LE(cpus, static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  EXPECT_EQ(ThreadPool().size(), cpus);
}

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
