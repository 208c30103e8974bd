#pragma once

#include <memory>
#include <utility>
#include <vector>

namespace kiln {

// An allocator whose elements start uninitialized where std::allocator would value-initialize them:
// a checkpoint's fp32 decode writes every element anyway, and zeroing gigabytes first was a serial
// pass (with all of its page faults) before the parallel one.
template <typename T>
struct UninitializedAllocator : std::allocator<T> {
  template <typename U>
  struct rebind {
    using other = UninitializedAllocator<U>;
  };
  UninitializedAllocator() = default;
  template <typename U>
  UninitializedAllocator(const UninitializedAllocator<U>&) noexcept {}
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};

// fp32 values; Floats(n) leaves them unset (write every one), Floats(n, v) fills.
using Floats = std::vector<float, UninitializedAllocator<float>>;

}  // namespace kiln
