#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "compiler/graph.h"
#include "core/json.h"
#include "core/thread_pool.h"
#include "engine/tensor_blob.h"

namespace kiln {

enum class Precision { FP32, BF16, FP16, Int8Weight, FP8 };

const char* precision_name(Precision p);
Precision precision_from_name(const std::string& name);  // throws naming the accepted values

// fp8 quantizes the inputs of the decoder-layer GEMMs; the other precisions compute on fp32 activations.
inline bool quantizes_activations(Precision p) { return p == Precision::FP8; }

struct QuantizedModel {
  std::vector<TensorBlob> tensors;
  // The engine header's "quantization" object: method, dtypes per role, per-tensor scales.
  Json quantization;
  // Weights of the decoder-layer GEMMs (the tensors whose dtype follows the precision).
  std::vector<std::string> gemm_weights;
};

// Applies the precision to every weight of the graph. Decoder-layer GEMM weights take the precision;
// the embedding and lm_head keep the checkpoint's own dtype (never narrower than it was trained or
// shipped in, and no copy wider than the source); norms and biases stay fp32. int8-weight stores one scale per
// output channel in "<weight>.scales"; fp8 stores per-tensor weight scales and, from `input_amax`
// (calibration, keyed by weight name), per-tensor input scales. `on_tensor` may throw to cancel.
// fp8_lm_head (fp8 only, else it throws): the lm_head's weight in E4M3 as well, with its scales like
// a GEMM's (TensorRT-LLM's quantized lm_head); a lm_head tied to the embedding gets an E4M3 copy
// named lm_head.weight, the embedding keeping its dtype. The header says so in lm_head_dtype.
// With a pool, each tensor's elements are converted in chunks on all its threads (the same bytes as
// without: every conversion is per element, amax a max).
QuantizedModel quantize(const Graph& graph, Precision precision, const std::map<std::string, float>& input_amax,
                        const std::function<void(size_t, size_t)>& on_tensor = {}, ThreadPool* pool = nullptr,
                        bool fp8_lm_head = false);
// The engine header's "quantization" object of a precision before any scales: method and the dtype
// of each role (what quantize records; fp8 adds its scales).
Json quantization_header(Precision precision, const ModelConfig& config);
// The same as quantize, freeing each fp32 weight of the graph once it is converted (graph.weights is left empty,
// the nodes as they were): the build's last use of them, so its peak memory is the fp32 graph
// rather than the graph plus the converted engine.
QuantizedModel quantize_releasing(Graph& graph, Precision precision, const std::map<std::string, float>& input_amax,
                                  const std::function<void(size_t, size_t)>& on_tensor = {},
                                  ThreadPool* pool = nullptr, bool fp8_lm_head = false);

// int8 weight-only quantization of a row-major [n, k] matrix, symmetric per output row.
void quantize_int8_rows(const float* w, int64_t n, int64_t k, int8_t* q, float* scales);
// fp8 E4M3 with one scale: q = e4m3(w / scale), scale = amax / 448.
float fp8_scale_for(float amax);
void quantize_fp8(const float* w, size_t count, float scale, uint8_t* q);

}  // namespace kiln
