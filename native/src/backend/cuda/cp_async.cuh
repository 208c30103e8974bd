#pragma once

// Ampere+ asynchronous copies from global into shared memory (LDGSTS): the bytes land in shared
// memory without passing through registers, so a thread can keep many loads in flight while it
// computes. Groups complete in the order they were committed; a thread that copies exactly the
// chunks it later reads itself needs no barrier, only its own wait_group.

namespace kiln::cuda {

template <int Bytes>
__device__ __forceinline__ void cp_async(void* shared, const void* global) {
  const auto dst = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  if constexpr (Bytes == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(global) : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(dst), "l"(global), "n"(Bytes) : "memory");
  }
}

// 16 bytes, or 16 zero bytes where `valid` is false (global is then not read, but must still be an
// address the caller may name: pass any in-bounds one).
__device__ __forceinline__ void cp_async_16_or_zero(void* shared, const void* global, bool valid) {
  const auto dst = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(global), "r"(valid ? 16 : 0)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most `Pending` of this thread's newest groups are still in flight.
template <int Pending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(Pending) : "memory");
}

}  // namespace kiln::cuda
