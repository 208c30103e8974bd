#pragma once

// Every CUDA runtime and cuBLASLt call of the backend goes through KILN_CUDA_CHECK / KILN_CUBLAS_CHECK:
// a failure becomes a kiln::Error naming the call, the status and where it was made, so a bad
// engine, an out-of-memory or a driver problem reaches the caller as a one-line diagnosis instead of
// a crash or a silently wrong result.

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <string>

#include "core/error.h"

namespace kiln::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t status, const char* call, const char* file, int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t status, const char* call, const char* file, int line);

inline void check_cuda(cudaError_t status, const char* call, const char* file, int line) {
  if (status != cudaSuccess) throw_cuda_error(status, call, file, line);
}
inline void check_cublas(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS) throw_cublas_error(status, call, file, line);
}

}  // namespace kiln::cuda

#define KILN_CUDA_CHECK(call) ::kiln::cuda::check_cuda((call), #call, __FILE__, __LINE__)
#define KILN_CUBLAS_CHECK(call) ::kiln::cuda::check_cublas((call), #call, __FILE__, __LINE__)
// After a kernel launch: launch-configuration errors surface here; faults inside the kernel surface
// at the next synchronizing call, which is checked too.
#define KILN_CUDA_CHECK_LAUNCH(what) ::kiln::cuda::check_cuda(cudaGetLastError(), what, __FILE__, __LINE__)
