#include "backend/cuda/gemv_kernel.cuh"

namespace kiln::cuda::gemv_detail {

void launch_normed_output_fp8(const Args& a, int64_t m, int split, cudaStream_t stream) {
  launch_any_split<Fp8Chunk, false, kOutNormed>(a, m, split, stream);
}

}  // namespace kiln::cuda::gemv_detail
