#include "backend/cuda/l2_prefetch.h"

#include "backend/cuda/check.h"

namespace kiln::cuda {
namespace {

// One bulk prefetch (TMA unit) per thread; 64 KiB pieces keep the instruction count small while the
// copy engine spreads the lines over every L2 slice.
constexpr int64_t kPiece = 64 * 1024;
constexpr int kThreads = 128;

__global__ void prefetch_kernel(const char* p, int64_t bytes) {
  const int64_t at = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * kPiece;
  if (at >= bytes) return;
  const auto size = static_cast<uint32_t>(min(kPiece, bytes - at));
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p + at), "r"(size) : "memory");
}

}  // namespace

void prefetch_to_l2(const void* p, int64_t bytes, cudaStream_t stream) {
  bytes &= ~int64_t{15};  // the bulk unit moves whole 16-byte groups
  if (bytes <= 0) return;
  const int64_t pieces = (bytes + kPiece - 1) / kPiece;
  const auto blocks = static_cast<unsigned>((pieces + kThreads - 1) / kThreads);
  prefetch_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<const char*>(p), bytes);
  KILN_CUDA_CHECK_LAUNCH("prefetch_kernel");
}

}  // namespace kiln::cuda
