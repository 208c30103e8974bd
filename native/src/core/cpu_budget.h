#pragma once

#include <optional>
#include <string>

namespace kiln {

// CPUs this process may keep busy: the CPUs it may run on (its affinity mask: a pod under the static
// CPU manager gets a set) and, when lower, its cgroup's CPU quota rounded up (a pod's CPU limit).
// std::thread::hardware_concurrency counts the node's CPUs: a pod limited to 8 of 128 that starts
// 128 threads is throttled most of every period. At least 1.
int cpu_budget();

// The CPUs a cgroup v2 cpu.max ("<quota> <period>" or "max <period>") allows, rounded up; none
// when unlimited or unreadable.
std::optional<int> cpus_of_cgroup_v2(const std::string& cpu_max);
// The same from cgroup v1's cpu.cfs_quota_us and cpu.cfs_period_us (quota -1: unlimited).
std::optional<int> cpus_of_cgroup_v1(const std::string& quota_us, const std::string& period_us);

}  // namespace kiln
