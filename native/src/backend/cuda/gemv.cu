#include "backend/cuda/gemv.h"
#include "backend/cuda/gemv_kernel.cuh"

#include <string>

namespace kiln::cuda {

std::vector<int> gemv_splits(bool fp8) {
  std::vector<int> splits(std::begin(kGemvSplits), std::end(kGemvSplits));
  if (fp8) splits.push_back(16);
  return splits;
}

bool gemv_wgmma_supports(int64_t m, int64_t k, bool normed_input) {
  return gemv_detail::wgmma_fits(m, k, normed_input);
}

bool gemv_supports(int64_t m, int64_t k, bool fp8, bool normed_input) {
  const int64_t chunk = fp8 ? 16 : 8;
  // Normed rows are staged in shared memory: at most kGemvNormSharedBytes of them.
  const bool fits = !normed_input || m * k * (fp8 ? 1 : 2) <= kGemvNormSharedBytes;
  return m >= 1 && m <= (normed_input ? kGemvNormMaxRows : kGemvMaxRows) && k % chunk == 0 && fits;
}

void gemv(const void* w, bool fp8, int64_t m, int64_t n, int64_t k, float scale, const GemvIn& in, const GemvOut& out,
          int split, cudaStream_t stream, bool stage_input, bool isolated) {
  const bool norm = in.h != nullptr;
  const bool silu = out.act != nullptr;
  if (!gemv_supports(m, k, fp8, norm) || (silu && n % 2 != 0) || (!norm && !in.x) || (!silu && !out.y)) {
    throw Error("kiln-gemv: m=" + std::to_string(m) + " n=" + std::to_string(n) + " k=" + std::to_string(k) +
                (fp8 ? " fp8" : " bf16") + (norm ? " normed input" : "") + (silu ? " SiLU output" : "") +
                " is not supported (m <= " + std::to_string(norm ? kGemvNormMaxRows : kGemvMaxRows) + ", k % " +
                (fp8 ? "16" : "8") + " == 0, n even for SiLU, an input and an output)");
  }
  if (split == kGemvWgmmaSplit && (!fp8 || !gemv_wgmma_supports(m, k, norm))) {
    throw Error("kiln-gemv: the wgmma kernel (split " + std::to_string(kGemvWgmmaSplit) + ") takes E4M3, 1-8 input " +
                "rows and k a multiple of 512 with m·k + (8 - m)·16 <= 49152 bytes, without a normed input; got m=" +
                std::to_string(m) + " k=" + std::to_string(k) + (fp8 ? "" : " bf16") + (norm ? " normed input" : ""));
  }
  gemv_detail::Args a;
  a.w = static_cast<const uint4*>(w);
  a.n = n;
  a.k = k;
  a.scale = scale;
  a.x = static_cast<const uint4*>(in.x);
  a.h = in.h;
  a.gamma = in.gamma;
  a.eps = in.eps;
  a.in_inv_scale = 1.0f / in.scale;
  a.y = out.y;
  a.beta = out.beta;
  a.y_settled = out.y_settled;
  a.act = out.act;
  a.act_inv_scale = 1.0f / out.act_scale;
  a.stage_input = stage_input;
  a.deep_prefetch = !isolated;
  if (fp8) gemv_detail::launch_fp8(a, m, split, norm, silu, stream);
  else gemv_detail::launch_bf16(a, m, split, norm, silu, stream);
}

void gemv_bf16(const bf16* w, const bf16* x, int64_t m, int64_t n, int64_t k, float* y, float beta, cudaStream_t stream,
               int split) {
  GemvIn in;
  in.x = x;
  GemvOut out;
  out.y = y;
  out.beta = beta;
  gemv(w, false, m, n, k, 1.0f, in, out, split, stream);
}

void gemv_fp8(const fp8* w, const fp8* x, int64_t m, int64_t n, int64_t k, float scale, float* y, float beta,
              cudaStream_t stream, int split) {
  GemvIn in;
  in.x = x;
  GemvOut out;
  out.y = y;
  out.beta = beta;
  gemv(w, true, m, n, k, scale, in, out, split, stream);
}

}  // namespace kiln::cuda
