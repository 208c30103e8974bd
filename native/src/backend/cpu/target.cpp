#include "backend/cpu/target.h"

#include <fstream>
#include <thread>

#include "backend/cpu/simd.h"
#include "core/error.h"

namespace kiln {

std::string cpu_target_fingerprint() {
#if defined(__x86_64__)
  const std::string arch = "x86_64";
#elif defined(__aarch64__)
  const std::string arch = "aarch64";
#else
  const std::string arch = "unknown";
#endif
#if KILN_CPU_AVX2
  return "cpu:" + arch + ":avx2+fma+f16c";
#else
  return "cpu:" + arch + ":scalar";
#endif
}

Json cpu_target_info() {
  std::string model = "unknown";
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) model = line.substr(colon + 2);
      break;
    }
  }
  return Json{{"backend", "cpu"},
              {"fingerprint", cpu_target_fingerprint()},
              {"cpu_model", model},
              {"hardware_threads", std::thread::hardware_concurrency()}};
}

void require_cpu_features() {
#if KILN_CPU_AVX2 && defined(__x86_64__)
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !__builtin_cpu_supports("f16c")) {
    throw Error("this build of kiln needs a CPU with AVX2, FMA and F16C");
  }
#endif
}

}  // namespace kiln
