#include "backend/cuda/device.h"

#include <cublasLt.h>

#include "backend/cuda/check.h"

namespace kiln::cuda {

DeviceBuffer::DeviceBuffer(size_t bytes, const std::string& what) : bytes_(bytes) {
  if (bytes == 0) return;
  const cudaError_t status = cudaMalloc(&ptr_, bytes);
  if (status != cudaSuccess) {
    ptr_ = nullptr;
    size_t free_bytes = 0;
    size_t total_bytes = 0;
    cudaGetLastError();
    cudaMemGetInfo(&free_bytes, &total_bytes);
    throw Error("CUDA: allocating " + std::to_string(bytes >> 20) + " MiB for " + what + " failed: " +
                cudaGetErrorString(status) + " (" + std::to_string(free_bytes >> 20) + " of " +
                std::to_string(total_bytes >> 20) + " MiB free)");
  }
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) cudaFree(ptr_);  // a destructor cannot throw; a failing free means the context is gone anyway
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (ptr_) cudaFree(ptr_);
    ptr_ = std::exchange(other.ptr_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

PinnedBuffer::PinnedBuffer(size_t bytes) { reserve(bytes); }

PinnedBuffer::~PinnedBuffer() {
  if (ptr_) cudaFreeHost(ptr_);
}

PinnedBuffer& PinnedBuffer::operator=(PinnedBuffer&& other) noexcept {
  if (this != &other) {
    if (ptr_) cudaFreeHost(ptr_);
    ptr_ = std::exchange(other.ptr_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

void PinnedBuffer::reserve(size_t bytes) {
  if (bytes <= bytes_) return;
  if (ptr_) KILN_CUDA_CHECK(cudaFreeHost(ptr_));
  ptr_ = nullptr;
  bytes_ = 0;
  KILN_CUDA_CHECK(cudaMallocHost(&ptr_, bytes));
  bytes_ = bytes;
}

bool device_available() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return count > 0;
}

namespace {

cudaDeviceProp current_device_properties() {
  int device = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&device));
  cudaDeviceProp prop{};
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop;
}

std::string version_string(int v) { return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10); }

}  // namespace

std::string target_fingerprint() {
  const cudaDeviceProp prop = current_device_properties();
  int runtime = 0;
  KILN_CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  return "cuda:sm_" + std::to_string(prop.major) + std::to_string(prop.minor) + ":" + prop.name + ":cuda-" +
         version_string(runtime) + ":cublasLt-" + std::to_string(cublasLtGetVersion());
}

Json target_info() {
  const cudaDeviceProp prop = current_device_properties();
  int runtime = 0;
  int driver = 0;
  KILN_CUDA_CHECK(cudaRuntimeGetVersion(&runtime));
  KILN_CUDA_CHECK(cudaDriverGetVersion(&driver));
  return Json{{"backend", "cuda"},
              {"fingerprint", target_fingerprint()},
              {"gpu", prop.name},
              {"sm", std::to_string(prop.major) + std::to_string(prop.minor)},
              {"multiprocessors", prop.multiProcessorCount},
              {"memory_bytes", prop.totalGlobalMem},
              {"l2_bytes", prop.l2CacheSize},
              {"cuda_runtime", version_string(runtime)},
              {"cuda_driver", version_string(driver)},
              {"cublaslt", cublasLtGetVersion()}};
}

}  // namespace kiln::cuda
