#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "backend/cuda/device.h"
#include "backend/cuda/gemv.h"
#include "core/json.h"

namespace kiln::cuda {

// The cuBLASLt handle, the one matmul description every GEMM of the backend shares (bf16 inputs,
// fp32 output, fp32 accumulation and scale, y = x · wᵀ), and the workspace algorithms may use.
// The GEMMs of one context run one after another on one stream (they share the workspace).
class LtContext {
 public:
  static constexpr size_t kWorkspaceBytes = size_t{32} << 20;

  LtContext();
  ~LtContext();
  LtContext(const LtContext&) = delete;
  LtContext& operator=(const LtContext&) = delete;

  cublasLtHandle_t handle() const { return handle_; }
  cublasLtMatmulDesc_t desc() const { return desc_; }
  void* workspace() const { return workspace_.get(); }

 private:
  cublasLtHandle_t handle_ = nullptr;
  cublasLtMatmulDesc_t desc_ = nullptr;
  DeviceBuffer workspace_;
};

// A stored algorithm: cuBLASLt documents cublasLtMatmulAlgo_t as plain data that can be saved and
// restored for the same library version (the engine's target fingerprint pins that version).
std::string algo_to_hex(const cublasLtMatmulAlgo_t& algo);
cublasLtMatmulAlgo_t algo_from_hex(const std::string& hex);  // throws kiln::Error on a malformed string
// The algorithm's configuration for people reading the autotune table (id, tile, stages, split-k...).
Json algo_config(const cublasLtMatmulAlgo_t& algo);

// y[m, n] (fp32, row-major) = alpha · x[m, k] (row-major) · w[n, k]ᵀ (the HF layout) + beta · y, with
// x and w both bf16 or both fp8 E4M3 (`input`; for fp8, alpha carries the two per-tensor scales).
// In cuBLASLt's column-major terms this is yᵀ[n, m] = op_T(w as [k, n]) · xᵀ[k, m] (the "TN" form
// Hopper's fp8 GEMMs require). The layouts for `m` rows are adjusted per call (two attribute
// writes, no allocation, no heuristic).
class LtGemm {
 public:
  LtGemm(const LtContext& context, int64_t n, int64_t k, cudaDataType_t input = CUDA_R_16BF);
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  int64_t n() const { return n_; }
  int64_t k() const { return k_; }
  cudaDataType_t input() const { return input_; }

  // Up to `max` algorithms cuBLASLt's heuristic proposes for m rows (build time and untuned engines
  // only), each with the workspace it needs within LtContext::kWorkspaceBytes.
  std::vector<cublasLtMatmulHeuristicResult_t> heuristic(int64_t m, int max);
  // Throws naming the shape when `algo` cannot run m rows on this device and library.
  void check(const cublasLtMatmulAlgo_t& algo, int64_t m);

  void run(const cublasLtMatmulAlgo_t& algo, const void* w, const void* x, int64_t m, float* y, float beta,
           cudaStream_t stream, float alpha = 1.0f);
  // Returns the status instead of throwing: the autotuner skips algorithms that refuse a problem.
  cublasStatus_t try_run(const cublasLtMatmulAlgo_t& algo, const void* w, const void* x, int64_t m, float* y,
                         float beta, cudaStream_t stream, float alpha = 1.0f);

 private:
  void set_rows(int64_t m);

  const LtContext& context_;
  int64_t n_ = 0;
  int64_t k_ = 0;
  cudaDataType_t input_ = CUDA_R_16BF;
  int64_t m_ = -1;
  cublasLtMatrixLayout_t w_layout_ = nullptr;
  cublasLtMatrixLayout_t x_layout_ = nullptr;
  cublasLtMatrixLayout_t y_layout_ = nullptr;
};

// "bf16" or "f8e4m3" (the engine's dtype names) to cuBLASLt's input type; throws on anything else.
cudaDataType_t gemm_input_type(const std::string& dtype);

// The GEMM kernels an autotune table entry may name ("cublaslt", "kiln-gemv").
enum class GemmTactic { CublasLt, KilnGemv };

// What the autotuner chose for one bucket: cuBLASLt's algorithm, or Kiln's GEMV kernel (gemv.h)
// where that was faster; `algo` is then still the bucket's best cuBLASLt algorithm, used for row
// counts beyond the GEMV's limit.
struct GemmChoice {
  GemmTactic tactic = GemmTactic::CublasLt;
  cublasLtMatmulAlgo_t algo{};
  int gemv_split = 1;  // the GEMV's split (gemv.h: bf16 warps per row pair, E4M3 per 16-row tile)
  bool gemv_stage_input = true;  // E4M3 GEMV: input rows widened once per block (gemv.h)
};

// The tuned tactics of one GEMM shape: the choice of the smallest tuned bucket that holds m rows,
// the largest bucket's beyond that (the CPU GemmPlan's rule).
class TunedGemm {
 public:
  TunedGemm(const LtContext& context, int64_t n, int64_t k, std::vector<std::pair<int64_t, GemmChoice>> by_bucket,
            cudaDataType_t input = CUDA_R_16BF);

  // `scale` multiplies the product (fp8: weight scale · input scale of this weight). y_settled: as
  // GemvOut::y_settled, for the GEMV tactic.
  void run(const void* w, const void* x, int64_t m, float* y, float beta, cudaStream_t stream, float scale = 1.0f,
           bool y_settled = false);
  // Whether m rows run on Kiln's GEMV (the tuned tactic), which can then fuse the SiLU·mul of its
  // output and, where that pays, the RMSNorm of its input (gemv.h) through run_gemv.
  bool gemv_at(int64_t m) const;
  bool fuses_norm(int64_t m) const;
  void run_gemv(const void* w, int64_t m, float scale, const GemvIn& in, const GemvOut& out, cudaStream_t stream);
  const GemmChoice& choose(int64_t m) const {
    for (const auto& [bucket, choice] : by_bucket_) {
      if (m <= bucket) return choice;
    }
    return by_bucket_.back().second;
  }

 private:
  LtGemm gemm_;
  std::vector<std::pair<int64_t, GemmChoice>> by_bucket_;  // ascending buckets
};

}  // namespace kiln::cuda
