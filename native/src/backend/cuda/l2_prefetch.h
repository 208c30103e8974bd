#pragma once

// Weights pulled into L2 by a kernel that does not use the memory bus itself (decode attention, the
// one-block RMSNorm), for the GEMM that runs after it: at batch 1 those kernels are latency, and the
// bus sits idle through them while the next GEMM's first wave then ramps up from DRAM. Each thread
// that takes part issues one bulk prefetch (Hopper's cp.async.bulk.prefetch.L2) of its share and
// goes on: nothing waits for it, and a line not yet there when the GEMM reads it is simply read
// from DRAM. Only weights, which no kernel writes, are prefetched, so the prefetch may come before
// the kernel's PDL wait.

#include <cstdint>

namespace kiln::cuda {

struct L2Prefetch {
  const void* p = nullptr;  // 16-byte aligned
  uint64_t bytes = 0;       // a multiple of 16; 0 = none
};

#ifdef __CUDACC__
// Part `part` of `parts` equal 16-byte-aligned shares of f (parts past the end issue nothing).
__device__ __forceinline__ void prefetch_l2_share(const L2Prefetch& f, uint64_t part, uint64_t parts) {
  if (f.bytes == 0) return;
  const uint64_t share = (f.bytes / parts + 15) & ~uint64_t{15};
  const uint64_t lo = part * share;
  if (lo >= f.bytes) return;
  const auto size = static_cast<uint32_t>(share < f.bytes - lo ? share : f.bytes - lo);
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(static_cast<const char*>(f.p) + lo), "r"(size)
               : "memory");
}
#endif

}  // namespace kiln::cuda
