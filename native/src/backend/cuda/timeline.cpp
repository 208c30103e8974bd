#include "backend/cuda/timeline.h"

#include <algorithm>
#include <limits>
#include <string>

#include "backend/cuda/check.h"
#include "backend/cuda/device.h"
#include "core/error.h"

namespace kiln::cuda {

namespace {

std::vector<TimelineSetter>& setters() {
  static std::vector<TimelineSetter> all;
  return all;
}

void point_every_unit_at(TimelineSlot* slots) {
  for (TimelineSetter set : setters()) KILN_CUDA_CHECK(set(slots));
}

}  // namespace

bool register_timeline_setter(TimelineSetter setter) {
  setters().push_back(setter);
  return true;
}

bool timeline_compiled() {
#ifdef KILN_CUDA_TIMELINE
  return !setters().empty();
#else
  return false;
#endif
}

std::vector<TimelineLaunch> record_timeline(cudaStream_t stream, const std::function<void()>& run) {
  if (!timeline_compiled()) {
    throw Error("the launch timeline needs a build with the KILN_CUDA_TIMELINE CMake option "
                "(KILN_CUDA_TIMELINE=1 bash test/gpu/build_native.sh)");
  }
  constexpr unsigned long long kNever = std::numeric_limits<unsigned long long>::max();
  std::vector<TimelineSlot> table(kTimelineSlots, TimelineSlot{kNever, 0, kNever, kNever, 0});
  DeviceBuffer slots(table.size() * sizeof(TimelineSlot), "launch timeline");
  KILN_CUDA_CHECK(cudaMemcpy(slots.get(), table.data(), slots.bytes(), cudaMemcpyHostToDevice));
  point_every_unit_at(slots.get<TimelineSlot>());
  // Both copies are synchronous only towards the host: the work `run` enqueues on a non-blocking
  // stream must not start before they land.
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  try {
    run();
    KILN_CUDA_CHECK(cudaStreamSynchronize(stream));
  } catch (...) {
    point_every_unit_at(nullptr);
    throw;
  }
  point_every_unit_at(nullptr);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  KILN_CUDA_CHECK(cudaMemcpy(table.data(), slots.get(), slots.bytes(), cudaMemcpyDeviceToHost));

  std::vector<TimelineSlot> used;
  for (const TimelineSlot& s : table) {
    if (s.grid_hi == 0 && s.grid_lo == kNever) continue;
    if (s.grid_lo != s.grid_hi) {
      throw Error("launch timeline: launches " + std::to_string(s.grid_lo) + " and " + std::to_string(s.grid_hi) +
                  " share a slot (more than " + std::to_string(kTimelineSlots) + " launches apart)");
    }
    used.push_back(s);
  }
  std::sort(used.begin(), used.end(),
            [](const TimelineSlot& a, const TimelineSlot& b) { return a.grid_lo < b.grid_lo; });
  std::vector<TimelineLaunch> launches;
  if (used.empty()) return launches;
  unsigned long long origin = kNever;
  for (const TimelineSlot& s : used) origin = std::min(origin, s.arrive_first);
  const auto us = [origin](unsigned long long ns) { return static_cast<double>(ns - origin) / 1e3; };
  for (const TimelineSlot& s : used) {
    TimelineLaunch l;
    l.grid = s.grid_lo;
    l.arrive_first_us = us(s.arrive_first);
    l.release_first_us = us(s.release_first);
    l.release_last_us = us(s.release_last);
    launches.push_back(l);
  }
  return launches;
}

}  // namespace kiln::cuda
