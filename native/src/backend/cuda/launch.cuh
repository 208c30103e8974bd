#pragma once

// Kernel launches with Programmatic Dependent Launch (Hopper): a kernel launched this way may start
// while the kernel before it in the stream is still finishing, so its launch and prologue overlap
// that kernel's tail instead of following it (inside a decode graph too, as programmatic edges).
// Every kernel of the backend therefore begins with wait_for_producer() before it touches anything
// the previous kernel writes (or reads: a write before the wait could race a reader), and then calls
// let_consumer_start() so the next kernel may be scheduled onto SMs its blocks leave free. Only
// reads of data no kernel writes (weights), or that only kernels two or more launches back wrote (a
// kernel starts after every block of the one before it passed its wait or exited: decode_attention.cu
// reads its KV rows this way, the residual GEMVs their residual), may come before the wait. That
// needs at least one block of every kernel to wait before it exits (decode attention's blocks past
// a token's splits exit first; its block 0 always waits). Both are no-ops in a kernel launched
// without the attribute (KILN_CUDA_PDL=0, or after a cuBLASLt kernel or a copy).

#include <cuda_runtime.h>

#include <cstdlib>
#include <string>
#include <utility>

#include "backend/cuda/check.h"
#include "backend/cuda/switches.h"
#include "backend/cuda/timeline.h"

namespace kiln::cuda {

inline bool pdl_enabled() {
  static const bool on = env_switch("KILN_CUDA_PDL", true);
  return on;
}

__device__ __forceinline__ void wait_for_producer() {
#if defined(KILN_CUDA_TIMELINE) && defined(__CUDACC__)
  TimelineSlot* const slot = timeline_arrive();
  asm volatile("griddepcontrol.wait;" ::: "memory");
  timeline_release(slot);
#else
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void let_consumer_start() { asm volatile("griddepcontrol.launch_dependents;" :::); }

// An L1 prefetch of the line holding p: no register waits for it, a later load finds it close.
__device__ __forceinline__ void prefetch_l1(const void* p) { asm volatile("prefetch.global.L1 [%0];" ::"l"(p)); }

// cluster: thread-block cluster dimensions, or (0, 0, 0) for none.
template <typename... Params, typename... Args>
void launch_kernel_ex(const char* what, void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared, dim3 cluster,
                      cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attributes[2]{};
  unsigned count = 0;
  if (pdl_enabled()) {
    attributes[count].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attributes[count++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster.x > 0) {
    attributes[count].id = cudaLaunchAttributeClusterDimension;
    attributes[count].val.clusterDim.x = cluster.x;
    attributes[count].val.clusterDim.y = cluster.y;
    attributes[count++].val.clusterDim.z = cluster.z;
  }
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared;
  config.stream = stream;
  config.attrs = attributes;
  config.numAttrs = count;
  check_cuda(cudaLaunchKernelEx(&config, kernel, static_cast<Params>(args)...), what, __FILE__, __LINE__);
}

template <typename... Params, typename... Args>
void launch_kernel_shared(const char* what, void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared,
                          cudaStream_t stream, Args&&... args) {
  launch_kernel_ex(what, kernel, grid, block, shared, dim3(0, 0, 0), stream, std::forward<Args>(args)...);
}

template <typename... Params, typename... Args>
void launch_kernel_cluster(const char* what, void (*kernel)(Params...), dim3 grid, dim3 block, dim3 cluster,
                           cudaStream_t stream, Args&&... args) {
  launch_kernel_ex(what, kernel, grid, block, 0, cluster, stream, std::forward<Args>(args)...);
}

template <typename... Params, typename... Args>
void launch_kernel(const char* what, void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream,
                   Args&&... args) {
  launch_kernel_shared(what, kernel, grid, block, 0, stream, std::forward<Args>(args)...);
}

}  // namespace kiln::cuda
