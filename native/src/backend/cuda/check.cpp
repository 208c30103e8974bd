#include "backend/cuda/check.h"

#include <filesystem>

namespace kiln::cuda {

namespace {

std::string where(const char* file, int line) {
  return std::filesystem::path(file).filename().string() + ":" + std::to_string(line);
}

}  // namespace

void throw_cuda_error(cudaError_t status, const char* call, const char* file, int line) {
  throw Error(std::string("CUDA: ") + call + " failed: " + cudaGetErrorString(status) + " (" + cudaGetErrorName(status) +
              ", " + std::to_string(static_cast<int>(status)) + ") at " + where(file, line));
}

void throw_cublas_error(cublasStatus_t status, const char* call, const char* file, int line) {
  throw Error(std::string("cuBLASLt: ") + call + " failed: " + cublasLtGetStatusString(status) + " (" +
              cublasLtGetStatusName(status) + ", " + std::to_string(static_cast<int>(status)) + ") at " +
              where(file, line));
}

}  // namespace kiln::cuda
