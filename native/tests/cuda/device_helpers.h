#pragma once

// Shared by the CUDA test files: host <-> device copies and the relative error the kernel checks use.

#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "backend/cuda/check.h"
#include "backend/cuda/device.h"

namespace kiln::test {

#define SKIP_WITHOUT_GPU() \
  if (!cuda::device_available()) GTEST_SKIP() << "no CUDA device visible"

template <typename T>
cuda::DeviceBuffer to_device(const std::vector<T>& host) {
  cuda::DeviceBuffer d(host.size() * sizeof(T), "test input");
  KILN_CUDA_CHECK(cudaMemcpy(d.get(), host.data(), d.bytes(), cudaMemcpyHostToDevice));
  return d;
}

template <typename T>
std::vector<T> to_host(const cuda::DeviceBuffer& d, size_t count) {
  std::vector<T> host(count);
  KILN_CUDA_CHECK(cudaDeviceSynchronize());
  KILN_CUDA_CHECK(cudaMemcpy(host.data(), d.get(), count * sizeof(T), cudaMemcpyDeviceToHost));
  return host;
}

// ‖got − want‖ / ‖want‖; NaN fails every comparison it reaches.
inline double relative_norm_error(const std::vector<float>& got, const std::vector<float>& want) {
  double diff = 0;
  double norm = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    diff += (static_cast<double>(got[i]) - want[i]) * (static_cast<double>(got[i]) - want[i]);
    norm += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(diff / norm);
}

}  // namespace kiln::test
