#include "compiler/precision.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "core/error.h"
#include "runtime/linear.h"

namespace kiln {

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::FP32: return "fp32";
    case Precision::BF16: return "bf16";
    case Precision::FP16: return "fp16";
    case Precision::Int8Weight: return "int8-weight";
    case Precision::FP8: return "fp8";
  }
  return "?";
}

Precision precision_from_name(const std::string& name) {
  for (Precision p : {Precision::FP32, Precision::BF16, Precision::FP16, Precision::Int8Weight, Precision::FP8}) {
    if (name == precision_name(p)) return p;
  }
  throw Error("precision \"" + name + "\" is not supported (fp32, bf16, fp16, int8-weight, fp8)");
}

void quantize_int8_rows(const float* w, int64_t n, int64_t k, int8_t* q, float* scales) {
  for (int64_t row = 0; row < n; ++row) {
    const float* src = w + row * k;
    float amax = 0.0f;
    for (int64_t i = 0; i < k; ++i) amax = std::max(amax, std::fabs(src[i]));
    const float scale = amax > 0.0f ? amax / 127.0f : 1.0f;
    scales[row] = scale;
    for (int64_t i = 0; i < k; ++i) {
      const float v = std::nearbyint(src[i] / scale);
      q[row * k + i] = static_cast<int8_t>(std::clamp(v, -127.0f, 127.0f));
    }
  }
}

float fp8_scale_for(float amax) { return amax > 0.0f ? amax / kF8E4M3Max : 1.0f; }

void quantize_fp8(const float* w, size_t count, float scale, uint8_t* q) {
  const float inv = 1.0f / scale;
  for (size_t i = 0; i < count; ++i) q[i] = f32_to_f8e4m3(w[i] * inv);
}

namespace {

DType checkpoint_dtype(const std::string& torch_dtype) {
  if (torch_dtype == "bfloat16") return DType::BF16;
  if (torch_dtype == "float16") return DType::F16;
  return DType::F32;
}

TensorBlob float_blob(const std::string& name, const Weight& w, DType dtype, ThreadPool* pool) {
  TensorBlob b{name, dtype, w.shape, WeightLayout::Row, std::vector<uint8_t>(w.data.size() * dtype_size(dtype))};
  const size_t width = dtype_size(dtype);
  for_chunks(pool, w.data.size(), kElementChunk, [&](size_t begin, size_t end) {
    encode_from_f32(dtype, w.data.data() + begin, b.bytes.data() + begin * width, end - begin);
  });
  return b;
}

// max |x| (a max: the same whatever the chunks).
float amax_of(const Floats& data, ThreadPool* pool) {
  std::vector<float> partial(data.size() / kElementChunk + 1, 0.0f);
  for_chunks(pool, data.size(), kElementChunk, [&](size_t begin, size_t end) {
    float amax = 0.0f;
    for (size_t i = begin; i < end; ++i) amax = std::max(amax, std::fabs(data[i]));
    partial[begin / kElementChunk] = amax;
  });
  return *std::max_element(partial.begin(), partial.end());
}

// Per layer {k_scale, k_amax, v_scale, v_amax} for an fp8 KV cache (stored e4m3(x / scale), so the
// calibrated amax lands on 448) when calibration observed every layer's keys and values; null
// otherwise (the cache then uses 1.0).
Json kv_cache_scales(int64_t layers, const std::map<std::string, float>& amax) {
  if (layers < 1) return nullptr;
  Json out = Json::array();
  for (int64_t l = 0; l < layers; ++l) {
    const auto k = amax.find(kv_cache_observation_name(l, false));
    const auto v = amax.find(kv_cache_observation_name(l, true));
    if (k == amax.end() || v == amax.end()) return nullptr;
    out.push_back(Json{{"k_scale", fp8_scale_for(k->second)},
                       {"k_amax", k->second},
                       {"v_scale", fp8_scale_for(v->second)},
                       {"v_amax", v->second}});
  }
  return out;
}

// The dtype each weight role takes at a precision, and the method's name for the header.
struct Roles {
  DType gemm = DType::F32;
  DType high = DType::F32;  // embedding and lm_head
  std::string method = "none";
};

Roles roles_of(Precision precision, const ModelConfig& config) {
  const DType source = checkpoint_dtype(config.torch_dtype);
  switch (precision) {
    case Precision::FP32: return {};
    case Precision::BF16: return {DType::BF16, source, "none"};
    case Precision::FP16: return {DType::F16, source, "none"};
    case Precision::Int8Weight: return {DType::I8, source, "int8 weight-only, symmetric per output channel"};
    case Precision::FP8:
      return {DType::F8E4M3, source, "fp8 e4m3 weights and activations, static per-tensor scales from calibration amax"};
  }
  return {};
}

// An fp8 blob of `w` under `name`, with its scales in `scales` (input range from calibration,
// recorded under `observed`: the weight name the calibration run read it as).
TensorBlob fp8_blob(const std::string& name, const Weight& w, const std::string& observed,
                    const std::map<std::string, float>& input_amax, Json& scales, ThreadPool* pool) {
  const float amax = amax_of(w.data, pool);
  const auto it = input_amax.find(observed);
  if (it == input_amax.end()) throw Error("fp8: calibration recorded no input range for " + observed);
  const float weight_scale = fp8_scale_for(amax);
  TensorBlob q{name, DType::F8E4M3, w.shape, WeightLayout::Row, std::vector<uint8_t>(w.data.size())};
  for_chunks(pool, w.data.size(), kElementChunk, [&](size_t begin, size_t end) {
    quantize_fp8(w.data.data() + begin, end - begin, weight_scale, q.bytes.data() + begin);
  });
  scales[name] = Json{{"weight_scale", weight_scale},
                      {"weight_amax", amax},
                      {"input_scale", fp8_scale_for(it->second)},
                      {"input_amax", it->second}};
  return q;
}

// quantize's body; `converted(name)` after each weight is converted.
QuantizedModel quantize_each(const Graph& g, Precision precision, const std::map<std::string, float>& input_amax,
                             const std::function<void(size_t, size_t)>& on_tensor, ThreadPool* pool,
                             const std::function<void(const std::string&)>& converted, bool fp8_lm_head) {
  if (fp8_lm_head && precision != Precision::FP8) {
    throw Error(std::string("an fp8 lm_head needs the fp8 precision (its input scale comes from fp8 calibration), not ") +
                precision_name(precision));
  }
  QuantizedModel out;
  std::set<std::string> gemm;
  std::set<std::string> high;
  std::string head;
  for (const auto& n : g.nodes) {
    if (n.op == "linear" && n.name != "lm_head") gemm.insert(n.weights[0]);
    if ((n.op == "linear" && n.name == "lm_head") || n.op == "embedding") high.insert(n.weights[0]);
    if (n.op == "linear" && n.name == "lm_head") head = n.weights[0];
  }
  out.gemm_weights.assign(gemm.begin(), gemm.end());
  // An fp8 lm_head tied to the embedding gets an E4M3 copy of its own as lm_head.weight (the
  // runtimes take that tensor where it exists); the embedding keeps its dtype either way.
  const bool tied_fp8_head = fp8_lm_head && head == "embed.weight";
  if (fp8_lm_head && !tied_fp8_head) {
    high.erase(head);
    gemm.insert(head);
  }

  const Roles roles = roles_of(precision, g.config);
  Json scales = Json::object();
  size_t done = 0;
  for (const auto& [name, w] : g.weights) {
    if (!gemm.count(name)) {
      out.tensors.push_back(float_blob(name, w, high.count(name) ? roles.high : DType::F32, pool));
      // The tied lm_head's input was observed under the weight it read, the embedding's name.
      if (tied_fp8_head && name == head) out.tensors.push_back(fp8_blob("lm_head.weight", w, head, input_amax, scales, pool));
    } else if (precision == Precision::Int8Weight) {
      const int64_t n = w.shape[0];
      const int64_t k = w.shape[1];
      TensorBlob q{name, DType::I8, w.shape, WeightLayout::Row, std::vector<uint8_t>(static_cast<size_t>(n * k))};
      TensorBlob s{name + ".scales", DType::F32, {n}, WeightLayout::Row, std::vector<uint8_t>(static_cast<size_t>(n) * 4)};
      // Rows are independent: chunks of whole rows.
      const size_t rows_per_chunk = std::max<size_t>(1, kElementChunk / static_cast<size_t>(k));
      for_chunks(pool, static_cast<size_t>(n), rows_per_chunk, [&](size_t begin, size_t end) {
        quantize_int8_rows(w.data.data() + begin * k, static_cast<int64_t>(end - begin), k,
                           reinterpret_cast<int8_t*>(q.bytes.data()) + begin * k,
                           reinterpret_cast<float*>(s.bytes.data()) + begin);
      });
      out.tensors.push_back(std::move(q));
      out.tensors.push_back(std::move(s));
    } else if (precision == Precision::FP8) {
      out.tensors.push_back(fp8_blob(name, w, name, input_amax, scales, pool));
    } else {
      out.tensors.push_back(float_blob(name, w, roles.gemm, pool));
    }
    converted(name);
    if (on_tensor) on_tensor(++done, g.weights.size());
  }
  out.quantization = quantization_header(precision, g.config);
  if (fp8_lm_head) out.quantization["lm_head_dtype"] = dtype_name(DType::F8E4M3);
  if (precision == Precision::FP8) {
    out.quantization["scales"] = scales;
    if (Json kv = kv_cache_scales(g.config.num_layers, input_amax); !kv.is_null()) out.quantization["kv_scales"] = kv;
  }
  return out;
}

}  // namespace

Json quantization_header(Precision precision, const ModelConfig& config) {
  const Roles roles = roles_of(precision, config);
  return Json{{"method", roles.method},
              {"gemm_dtype", dtype_name(roles.gemm)},
              {"embedding_lm_head_dtype", dtype_name(roles.high)},
              {"norm_bias_dtype", "f32"},
              {"activations", quantizes_activations(precision) ? "f8e4m3" : "f32"}};
}

QuantizedModel quantize(const Graph& g, Precision precision, const std::map<std::string, float>& input_amax,
                        const std::function<void(size_t, size_t)>& on_tensor, ThreadPool* pool, bool fp8_lm_head) {
  return quantize_each(g, precision, input_amax, on_tensor, pool, [](const std::string&) {}, fp8_lm_head);
}

QuantizedModel quantize_releasing(Graph& g, Precision precision, const std::map<std::string, float>& input_amax,
                                  const std::function<void(size_t, size_t)>& on_tensor, ThreadPool* pool,
                                  bool fp8_lm_head) {
  QuantizedModel out = quantize_each(g, precision, input_amax, on_tensor, pool,
                                     [&](const std::string& name) { Floats().swap(g.weights.at(name).data); },
                                     fp8_lm_head);
  g.weights.clear();
  return out;
}

}  // namespace kiln
