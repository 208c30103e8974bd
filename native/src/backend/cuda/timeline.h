#pragma once

// The launch timeline of a stretch of stream work (a decode graph's replay): for every Kiln kernel
// launch, when its first block reached the PDL wait and when its first and last blocks were let
// past it. A kernel is let past its wait once the kernel before it has completed, so the first
// release of launch i + 1 less that of launch i is what launch i adds to the critical path as it
// runs in the graph, PDL overlap included, the norm kernels too (which the graph's node switches of
// kernel_costs.cpp cannot take out without breaking the programmatic edges around them). Nsight
// Systems does not run on the GPU machine, and Nsight Compute serializes kernels.
//
// Compiled in only with the KILN_CUDA_TIMELINE CMake option (a build of its own:
// test/gpu/build_native.sh with KILN_CUDA_TIMELINE=1): every kernel's wait_for_producer (launch.cuh)
// then marks its block's arrival and release in a table indexed by the launch's %gridid. Thread 0
// of each block marks with fire-and-forget reductions; the table's pointer is loaded at the
// arrival, before the wait, so the release adds a timer read and two reductions to the critical
// path, not a round trip.

#include <cuda_runtime.h>

#include <cstdint>
#include <functional>
#include <vector>

namespace kiln::cuda {

// One launch's marks, nanoseconds of %globaltimer; grid_lo != grid_hi means two launches fell on
// one slot (the table tells launches apart that are fewer than kTimelineSlots grid ids apart:
// %gridid is a "temporal grid launch number", taken to grow by launch; the note of
// kernel_costs.cpp gives the ids' span and the timer's finest step, to check both).
struct TimelineSlot {
  unsigned long long grid_lo, grid_hi, arrive_first, release_first, release_last;
};
constexpr int kTimelineSlots = 1 << 16;  // 2.6 MB; cuBLASLt's launches take grid ids too

struct TimelineLaunch {
  unsigned long long grid = 0;  // %gridid: launches in the order they were made
  // Microseconds after the first launch's first arrival.
  double arrive_first_us = 0, release_first_us = 0, release_last_us = 0;
};

bool timeline_compiled();
// The Kiln kernel launches `run` enqueues on `stream`, in launch order (run is synchronized
// before the table is read). Launches of other libraries (cuBLASLt) are not in it. Throws where the
// build has no timeline, or where two launches shared a slot.
std::vector<TimelineLaunch> record_timeline(cudaStream_t stream, const std::function<void()>& run);

// Each CUDA translation unit that includes launch.cuh has its own device pointer to the table
// (no relocatable device code); it registers a setter for it here at static initialization.
using TimelineSetter = cudaError_t (*)(TimelineSlot*);
bool register_timeline_setter(TimelineSetter setter);

#if defined(KILN_CUDA_TIMELINE) && defined(__CUDACC__)
namespace {
__device__ TimelineSlot* g_timeline_slots = nullptr;

cudaError_t set_timeline_slots(TimelineSlot* slots) {
  return cudaMemcpyToSymbol(g_timeline_slots, &slots, sizeof slots);
}
const bool g_timeline_registered = register_timeline_setter(&set_timeline_slots);

__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long now = 0;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  return now;
}

// Thread 0's slot, found and marked before the wait (the table pointer's load is a round trip), or
// null: other threads, or no table.
__device__ __forceinline__ TimelineSlot* timeline_arrive() {
  if (threadIdx.x + threadIdx.y + threadIdx.z != 0) return nullptr;
  TimelineSlot* const slots = g_timeline_slots;
  if (!slots) return nullptr;
  unsigned long long grid = 0;
  asm volatile("mov.u64 %0, %%gridid;" : "=l"(grid));
  TimelineSlot* const slot = slots + grid % kTimelineSlots;
  atomicMin(&slot->grid_lo, grid);
  atomicMax(&slot->grid_hi, grid);
  atomicMin(&slot->arrive_first, global_ns());
  return slot;
}

__device__ __forceinline__ void timeline_release(TimelineSlot* slot) {
  if (!slot) return;
  const unsigned long long now = global_ns();
  atomicMin(&slot->release_first, now);
  atomicMax(&slot->release_last, now);
}
}  // namespace
#endif

}  // namespace kiln::cuda
