#include "backend/cuda/gemv_kernel.cuh"

namespace kiln::cuda::gemv_detail {

void launch_bf16(const Args& a, int64_t m, int split, bool norm, bool silu, cudaStream_t stream) {
  launch<Bf16Chunk>(a, m, split, norm, silu, stream);
}

}  // namespace kiln::cuda::gemv_detail
