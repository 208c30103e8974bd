#include "core/cpu_budget.h"

#include <sched.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <thread>

namespace kiln {

namespace {

std::optional<int> cpus_of(long long quota, long long period) {
  if (quota <= 0 || period <= 0) return std::nullopt;
  return static_cast<int>(std::max<long long>(1, (quota + period - 1) / period));
}

std::string read_file(const char* path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

std::optional<int> cpus_of_cgroup_v2(const std::string& cpu_max) {
  std::istringstream in(cpu_max);
  std::string quota;
  long long period = 0;
  if (!(in >> quota >> period) || quota == "max") return std::nullopt;
  try {
    return cpus_of(std::stoll(quota), period);
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

std::optional<int> cpus_of_cgroup_v1(const std::string& quota_us, const std::string& period_us) {
  try {
    return cpus_of(std::stoll(quota_us), std::stoll(period_us));
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

int cpu_budget() {
  int cpus = static_cast<int>(std::thread::hardware_concurrency());
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) cpus = CPU_COUNT(&set);
  std::optional<int> quota = cpus_of_cgroup_v2(read_file("/sys/fs/cgroup/cpu.max"));
  if (!quota) {
    quota = cpus_of_cgroup_v1(read_file("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
                              read_file("/sys/fs/cgroup/cpu/cpu.cfs_period_us"));
  }
  if (quota) cpus = std::min(cpus, *quota);
  return std::max(1, cpus);
}

}  // namespace kiln
