#include "backend/cuda/gemv_kernel.cuh"

namespace kiln::cuda::gemv_detail {

void launch_fp8(const Args& a, int64_t m, int split, bool norm, bool silu, cudaStream_t stream) {
  launch<Fp8Chunk>(a, m, split, norm, silu, stream);
}

}  // namespace kiln::cuda::gemv_detail
