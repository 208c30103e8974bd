#include "backend/cuda/gemm.h"

#include <algorithm>
#include <cstring>

#include "backend/cuda/check.h"
#include "backend/cuda/gemv.h"

namespace kiln::cuda {

LtContext::LtContext() : workspace_(kWorkspaceBytes, "the cuBLASLt workspace") {
  KILN_CUBLAS_CHECK(cublasLtCreate(&handle_));
  KILN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc_, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t transpose = CUBLAS_OP_T;
  const cublasOperation_t keep = CUBLAS_OP_N;
  KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof transpose));
  KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc_, CUBLASLT_MATMUL_DESC_TRANSB, &keep, sizeof keep));
}

LtContext::~LtContext() {
  if (desc_) cublasLtMatmulDescDestroy(desc_);
  if (handle_) cublasLtDestroy(handle_);
}

std::string algo_to_hex(const cublasLtMatmulAlgo_t& algo) {
  static const char* digits = "0123456789abcdef";
  const auto* bytes = reinterpret_cast<const uint8_t*>(&algo);
  std::string out;
  for (size_t i = 0; i < sizeof algo; ++i) {
    out += digits[bytes[i] >> 4];
    out += digits[bytes[i] & 0xf];
  }
  return out;
}

cublasLtMatmulAlgo_t algo_from_hex(const std::string& hex) {
  cublasLtMatmulAlgo_t algo{};
  if (hex.size() != 2 * sizeof algo) {
    throw Error("cuBLASLt algorithm: expected " + std::to_string(2 * sizeof algo) + " hex digits, got " +
                std::to_string(hex.size()));
  }
  auto* bytes = reinterpret_cast<uint8_t*>(&algo);
  const auto nibble = [&](char c) -> uint8_t {
    if (c >= '0' && c <= '9') return static_cast<uint8_t>(c - '0');
    if (c >= 'a' && c <= 'f') return static_cast<uint8_t>(c - 'a' + 10);
    throw Error(std::string("cuBLASLt algorithm: '") + c + "' is not a lowercase hex digit");
  };
  for (size_t i = 0; i < sizeof algo; ++i) bytes[i] = static_cast<uint8_t>(nibble(hex[2 * i]) << 4 | nibble(hex[2 * i + 1]));
  return algo;
}

Json algo_config(const cublasLtMatmulAlgo_t& algo) {
  const auto get = [&](cublasLtMatmulAlgoConfigAttributes_t attribute, auto& value) {
    size_t written = 0;
    KILN_CUBLAS_CHECK(cublasLtMatmulAlgoConfigGetAttribute(&algo, attribute, &value, sizeof value, &written));
  };
  int32_t id = 0;
  uint32_t tile = 0, stages = 0, reduction = 0, swizzle = 0, custom = 0;
  int32_t splitk = 0;
  uint16_t cluster = 0;
  get(CUBLASLT_ALGO_CONFIG_ID, id);
  get(CUBLASLT_ALGO_CONFIG_TILE_ID, tile);
  get(CUBLASLT_ALGO_CONFIG_STAGES_ID, stages);
  get(CUBLASLT_ALGO_CONFIG_SPLITK_NUM, splitk);
  get(CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, reduction);
  get(CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, swizzle);
  get(CUBLASLT_ALGO_CONFIG_CUSTOM_OPTION, custom);
  get(CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, cluster);
  return Json{{"id", id},           {"tile", tile},     {"stages", stages}, {"splitk", splitk},
              {"reduction", reduction}, {"swizzle", swizzle}, {"custom", custom}, {"cluster", cluster}};
}

cudaDataType_t gemm_input_type(const std::string& dtype) {
  if (dtype == "bf16") return CUDA_R_16BF;
  if (dtype == "f8e4m3") return CUDA_R_8F_E4M3;
  throw Error("CUDA GEMM: input dtype " + dtype + " is not supported (bf16, f8e4m3)");
}

LtGemm::LtGemm(const LtContext& context, int64_t n, int64_t k, cudaDataType_t input)
    : context_(context), n_(n), k_(k), input_(input) {
  const auto u = [](int64_t v) { return static_cast<uint64_t>(v); };
  KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&w_layout_, input, u(k), u(n), k));
  KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&x_layout_, input, u(k), 1, k));
  KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&y_layout_, CUDA_R_32F, u(n), 1, n));
  set_rows(1);
}

LtGemm::~LtGemm() {
  if (w_layout_) cublasLtMatrixLayoutDestroy(w_layout_);
  if (x_layout_) cublasLtMatrixLayoutDestroy(x_layout_);
  if (y_layout_) cublasLtMatrixLayoutDestroy(y_layout_);
}

void LtGemm::set_rows(int64_t m) {
  if (m == m_) return;
  if (m < 1) throw Error("GEMM [" + std::to_string(n_) + " x " + std::to_string(k_) + "]: no rows");
  const uint64_t cols = static_cast<uint64_t>(m);
  KILN_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(x_layout_, CUBLASLT_MATRIX_LAYOUT_COLS, &cols, sizeof cols));
  KILN_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(y_layout_, CUBLASLT_MATRIX_LAYOUT_COLS, &cols, sizeof cols));
  m_ = m;
}

std::vector<cublasLtMatmulHeuristicResult_t> LtGemm::heuristic(int64_t m, int max) {
  set_rows(m);
  cublasLtMatmulPreference_t preference = nullptr;
  KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&preference));
  const uint64_t workspace = LtContext::kWorkspaceBytes;
  std::vector<cublasLtMatmulHeuristicResult_t> results(static_cast<size_t>(max));
  int found = 0;
  cublasStatus_t status = cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                               &workspace, sizeof workspace);
  if (status == CUBLAS_STATUS_SUCCESS) {
    status = cublasLtMatmulAlgoGetHeuristic(context_.handle(), context_.desc(), w_layout_, x_layout_, y_layout_,
                                            y_layout_, preference, max, results.data(), &found);
  }
  cublasLtMatmulPreferenceDestroy(preference);
  KILN_CUBLAS_CHECK(status);
  results.resize(static_cast<size_t>(found));
  results.erase(std::remove_if(results.begin(), results.end(),
                               [](const auto& r) { return r.state != CUBLAS_STATUS_SUCCESS; }),
                results.end());
  if (results.empty()) {
    throw Error("cuBLASLt proposes no algorithm for GEMM m=" + std::to_string(m) + " n=" + std::to_string(n_) +
                " k=" + std::to_string(k_) + " (" + (input_ == CUDA_R_16BF ? "bf16" : "fp8 e4m3") + " in, fp32 out)");
  }
  return results;
}

void LtGemm::check(const cublasLtMatmulAlgo_t& algo, int64_t m) {
  set_rows(m);
  cublasLtMatmulHeuristicResult_t result{};
  const cublasStatus_t status = cublasLtMatmulAlgoCheck(context_.handle(), context_.desc(), w_layout_, x_layout_,
                                                        y_layout_, y_layout_, &algo, &result);
  if (status != CUBLAS_STATUS_SUCCESS || result.workspaceSize > LtContext::kWorkspaceBytes) {
    throw Error("stored cuBLASLt algorithm " + algo_config(algo).dump() + " cannot run GEMM m=" + std::to_string(m) +
                " n=" + std::to_string(n_) + " k=" + std::to_string(k_) + " here (" + cublasLtGetStatusName(status) +
                ", workspace " + std::to_string(result.workspaceSize) + " bytes); rebuild the engine on this target");
  }
}

cublasStatus_t LtGemm::try_run(const cublasLtMatmulAlgo_t& algo, const void* w, const void* x, int64_t m, float* y,
                               float beta, cudaStream_t stream, float alpha) {
  set_rows(m);
  return cublasLtMatmul(context_.handle(), context_.desc(), &alpha, w, w_layout_, x, x_layout_, &beta, y, y_layout_, y,
                        y_layout_, &algo, context_.workspace(), LtContext::kWorkspaceBytes, stream);
}

void LtGemm::run(const cublasLtMatmulAlgo_t& algo, const void* w, const void* x, int64_t m, float* y, float beta,
                 cudaStream_t stream, float alpha) {
  const cublasStatus_t status = try_run(algo, w, x, m, y, beta, stream, alpha);
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw Error(std::string("cuBLASLt: GEMM m=") + std::to_string(m) + " n=" + std::to_string(n_) + " k=" +
                std::to_string(k_) + " failed: " + cublasLtGetStatusString(status) + " (" + cublasLtGetStatusName(status) + ")");
  }
}

TunedGemm::TunedGemm(const LtContext& context, int64_t n, int64_t k,
                     std::vector<std::pair<int64_t, GemmChoice>> by_bucket, cudaDataType_t input)
    : gemm_(context, n, k, input), by_bucket_(std::move(by_bucket)) {
  if (by_bucket_.empty()) throw Error("GEMM [" + std::to_string(n) + " x " + std::to_string(k) + "]: no algorithm");
  std::sort(by_bucket_.begin(), by_bucket_.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (const auto& [bucket, choice] : by_bucket_) gemm_.check(choice.algo, bucket);
}

bool TunedGemm::gemv_at(int64_t m) const {
  const GemmChoice& c = choose(m);
  const bool fp8 = gemm_.input() == CUDA_R_8F_E4M3;
  // m past the largest bucket takes that bucket's choice: a wgmma split must fit m rows too.
  return c.tactic == GemmTactic::KilnGemv && gemv_supports(m, gemm_.k(), fp8) &&
         (c.gemv_split != kGemvWgmmaSplit || gemv_wgmma_supports(m, gemm_.k()));
}

bool TunedGemm::fuses_norm(int64_t m) const {
  // Every block normalises the rows again, so the fusion only pays with few blocks: measured on an
  // H200 (Llama-3.2-1B shapes, batch 1), the 1B QKV GEMV (768 blocks) with the norm inside took
  // 8.5 us against 11.1 for norm kernel + GEMV, gate_up (4096 blocks) 28 us against 25; E4M3
  // staging cost more still (the 1B QKV GEMV 11.7 us against about 8 unfused). With the staging
  // vectorized (a float4 of row and gamma per thread), fusing E4M3 too where a GEMV has at most 1024
  // blocks was even (H200, 8B fp8 batch 1: 2.661 against 2.666 ms), and fusing every GEMV lost (3.084).
  // With the tensor-core E4M3 GEMV (8x fewer blocks; its ring-pipelined variant, 25d0de4) it was even
  // again: 2.827 against 2.830 ms.
  constexpr int64_t kMaxNormBlocks = 1024;
  if (gemm_.input() == CUDA_R_8F_E4M3 || !gemv_at(m) || !gemv_supports(m, gemm_.k(), false, true)) return false;
  const int64_t rows_per_block = gemv_rows_per_block(choose(m).gemv_split);
  return (gemm_.n() + rows_per_block - 1) / rows_per_block <= kMaxNormBlocks;
}

void TunedGemm::run_gemv(const void* w, int64_t m, float scale, const GemvIn& in, const GemvOut& out,
                         cudaStream_t stream) {
  const GemmChoice& c = choose(m);
  gemv(w, gemm_.input() == CUDA_R_8F_E4M3, m, gemm_.n(), gemm_.k(), scale, in, out, c.gemv_split, stream,
       c.gemv_stage_input);
}

void TunedGemm::run(const void* w, const void* x, int64_t m, float* y, float beta, cudaStream_t stream, float scale,
                    bool y_settled) {
  if (gemv_at(m)) {
    GemvIn in;
    in.x = x;
    GemvOut out;
    out.y = y;
    out.beta = beta;
    out.y_settled = y_settled;
    run_gemv(w, m, scale, in, out, stream);
    return;
  }
  gemm_.run(choose(m).algo, w, x, m, y, beta, stream, scale);
}

}  // namespace kiln::cuda
