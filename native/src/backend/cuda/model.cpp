#include "backend/cuda/model.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "backend/cuda/autotune.h"
#include "backend/cuda/check.h"
#include "backend/cuda/decode_attention.h"
#include "backend/cuda/graph.h"
#include "backend/cuda/prefill_attention.h"
#include "backend/cuda/switches.h"
#include "backend/tactic_override.h"
#include "core/error.h"
#include "runtime/rope.h"

namespace kiln::cuda {

namespace {

int64_t round_up_pow2(int64_t v) {
  int64_t p = 1;
  while (p < v) p *= 2;
  return p;
}

}  // namespace

CudaKvCache::CudaKvCache(int64_t layers, int64_t pages, int64_t page_size, int64_t kv_dim, DType dtype,
                         std::vector<float> k_scales, std::vector<float> v_scales)
    : layers_(layers),
      pages_(pages),
      page_size_(page_size),
      kv_dim_(kv_dim),
      dtype_(dtype),
      k_scales_(std::move(k_scales)),
      v_scales_(std::move(v_scales)) {
  if (layers < 1 || pages < 1 || page_size < 1 || kv_dim < 1) {
    throw Error("CUDA KV cache: layers (" + std::to_string(layers) + "), pages (" + std::to_string(pages) +
                "), page size (" + std::to_string(page_size) + ") and kv_dim (" + std::to_string(kv_dim) +
                ") must all be positive");
  }
  if (dtype != DType::BF16 && dtype != DType::F8E4M3) {
    throw Error(std::string("CUDA KV cache: dtype ") + dtype_name(dtype) + " is not supported (bf16, f8e4m3)");
  }
  for (auto* scales : {&k_scales_, &v_scales_}) {
    if (scales->empty()) scales->assign(static_cast<size_t>(layers), 1.0f);
    if (static_cast<int64_t>(scales->size()) != layers) {
      throw Error("CUDA KV cache: " + std::to_string(scales->size()) + " KV scales for " + std::to_string(layers) +
                  " layers");
    }
    for (float s : *scales) {
      if (!(s > 0.0f) || !std::isfinite(s)) throw Error("CUDA KV cache: KV scales must be positive and finite");
    }
  }
  const size_t bytes = static_cast<size_t>(layers * layer_bytes());
  keys_ = DeviceBuffer(bytes, "KV cache keys (" + std::to_string(pages) + " pages)");
  values_ = DeviceBuffer(bytes, "KV cache values (" + std::to_string(pages) + " pages)");
}

const void* CudaModel::upload(const std::string& name, DType as, bool interleave) {
  const TensorView& t = engine_->tensor(name);
  const size_t count = t.bytes / dtype_size(t.dtype);
  std::vector<uint8_t> converted;
  const uint8_t* src = t.data;
  if (t.layout != WeightLayout::Row) {
    throw Error(engine_->source() + ": tensor " + name + " has layout " + layout_name(t.layout) +
                "; CUDA engines keep the row layout");
  }
  if (t.dtype != as) {
    // Only float dtypes widen or narrow here: an embedding / lm_head kept in the checkpoint's fp32 or
    // fp16 runs as bf16 on the GPU (what transformers computes in bf16 too).
    if (!(as == DType::BF16 && (t.dtype == DType::F32 || t.dtype == DType::F16))) {
      throw Error(engine_->source() + ": tensor " + name + " is " + dtype_name(t.dtype) + "; the CUDA backend needs " +
                  dtype_name(as));
    }
    std::vector<float> f(count);
    decode_to_f32(t.dtype, t.data, f.data(), count);
    converted.resize(count * 2);
    encode_from_f32(DType::BF16, f.data(), converted.data(), count);
    src = converted.data();
  }
  std::vector<uint8_t> interleaved;
  if (interleave) {
    if (t.shape.size() != 2 || t.shape[0] % 2 != 0) throw Error(engine_->source() + ": tensor " + name + " is not [2I, k]");
    const size_t row = static_cast<size_t>(t.shape[1]) * dtype_size(as);
    const size_t half = static_cast<size_t>(t.shape[0] / 2);
    interleaved.resize(count * dtype_size(as));
    for (size_t j = 0; j < half; ++j) {
      std::memcpy(interleaved.data() + 2 * j * row, src + j * row, row);
      std::memcpy(interleaved.data() + (2 * j + 1) * row, src + (half + j) * row, row);
    }
    src = interleaved.data();
  }
  DeviceBuffer buffer(count * dtype_size(as), "weight " + name);
  KILN_CUDA_CHECK(cudaMemcpy(buffer.get(), src, buffer.bytes(), cudaMemcpyHostToDevice));
  weights_.push_back(std::move(buffer));
  return weights_.back().get();
}

const float* CudaModel::upload_optional_vector(const std::string& name, int64_t length) {
  const TensorView* t = engine_->find(name);
  if (!t) return nullptr;
  if (t->dtype != DType::F32 || t->shape != std::vector<int64_t>{length}) {
    throw Error(engine_->source() + ": tensor " + name + " must be f32 [" + std::to_string(length) + "]");
  }
  return static_cast<const float*>(upload(name, DType::F32));
}

void CudaModel::apply_tactic_overrides(const std::string& source) {
  const char* text = std::getenv("KILN_CUDA_TACTIC");
  if (!text) return;
  for (const TacticOverride& o : parse_tactic_overrides(text)) {
    const std::string what = "KILN_CUDA_TACTIC: " + std::to_string(o.n) + "x" + std::to_string(o.k) + ":" + o.dtype +
                             "@" + std::to_string(o.bucket);
    GemmChoice* found = nullptr;
    if (const auto table = tuned_.find({o.n, o.k, o.dtype}); table != tuned_.end()) {
      for (auto& [bucket, c] : table->second) {
        if (bucket == o.bucket) found = &c;
      }
    }
    if (!found) {
      throw Error(what + ": " + source + "'s autotune table has no such GEMM bucket (kiln-native inspect lists them)");
    }
    GemmChoice& choice = *found;
    choice.tactic = o.gemv ? GemmTactic::KilnGemv : GemmTactic::CublasLt;
    if (o.gemv) {
      const std::vector<int> splits = gemv_splits(o.dtype == "f8e4m3");
      if (o.split == kGemvWgmmaSplit) {
        // A bucket runs every row count up to it: the largest must fit.
        if (o.dtype != "f8e4m3" || !gemv_wgmma_supports(o.bucket, o.k)) {
          throw Error(what + ": the wgmma GEMV (split " + std::to_string(kGemvWgmmaSplit) +
                      ") runs E4M3 at buckets up to 8 with k a multiple of 512 and bucket·k + (8 - bucket)·16 <= 49152");
        }
      } else if (std::find(splits.begin(), splits.end(), o.split) == splits.end()) {
        throw Error(what + ": kiln-gemv has no split " + std::to_string(o.split) + " for " + o.dtype);
      }
      choice.gemv_split = o.split;
      choice.gemv_stage_input = o.stage_input;
    }
  }
}

TunedGemm* CudaModel::gemm_for(int64_t n, int64_t k, const std::string& dtype) {
  const GemmKey key{n, k, dtype};
  auto& slot = gemms_[key];
  if (slot) return slot.get();
  auto algos = tuned_[key];
  const cudaDataType_t input = gemm_input_type(dtype);
  if (algos.empty()) {
    // An engine built without autotuning: cuBLASLt's first proposal per bucket, chosen here once.
    LtGemm probe(lt_, n, k, input);
    for (int64_t m : gemm_buckets(max_batch_, max_seq_len_)) {
      algos.emplace_back(m, GemmChoice{GemmTactic::CublasLt, probe.heuristic(m, 1).front().algo});
    }
  }
  slot = std::make_unique<TunedGemm>(lt_, n, k, std::move(algos), input);
  return slot.get();
}

CudaModel::Projection CudaModel::projection(const std::string& name, int64_t n, int64_t k, bool interleave) {
  const Engine& e = *engine_;
  const TensorView& t = e.tensor(name);
  if (t.shape != std::vector<int64_t>{n, k}) {
    throw Error(e.source() + ": tensor " + name + " must be [" + std::to_string(n) + ", " + std::to_string(k) + "]");
  }
  Projection p;
  if (!fp8_) {
    p.weight = upload(name, DType::BF16, interleave);
    p.gemm = gemm_for(n, k, "bf16");
    return p;
  }
  const Json& scales = e.header()["quantization"]["scales"];
  if (!scales.contains(name) || !scales[name].contains("weight_scale") || !scales[name].contains("input_scale")) {
    throw Error(e.source() + ": fp8 engine has no weight_scale/input_scale for " + name + " in quantization.scales");
  }
  const float weight_scale = scales[name]["weight_scale"].get<float>();
  p.input_scale = scales[name]["input_scale"].get<float>();
  if (!(weight_scale > 0.0f) || !(p.input_scale > 0.0f)) {
    throw Error(e.source() + ": fp8 scales of " + name + " must be positive");
  }
  p.alpha = weight_scale * p.input_scale;
  p.weight = upload(name, DType::F8E4M3, interleave);
  p.gemm = gemm_for(n, k, "f8e4m3");
  return p;
}

CudaModel::CudaModel(std::shared_ptr<const Engine> engine) : engine_(std::move(engine)) {
  const Engine& e = *engine_;
  const ModelConfig& c = e.config();
  max_seq_len_ = e.limit("max_seq_len");
  max_batch_ = e.limit("max_batch");
  if (c.o_bias || c.mlp_bias) {
    throw Error(e.source() + ": the CUDA backend does not run o/MLP biases yet (" + c.hf_architecture + ")");
  }
  if (!attention_supports_head_dim(c.head_dim)) {
    throw Error(e.source() + ": the CUDA attention kernel supports head_dim 32, 64 or 128, the model has " +
                std::to_string(c.head_dim));
  }
  KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  int device = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&device));
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&multiprocessors_, cudaDevAttrMultiProcessorCount, device));
  use_graphs_ = env_switch("KILN_CUDA_GRAPHS", true);
  decode_attention_ = env_switch("KILN_CUDA_DECODE_ATTENTION", true);
  prefill_mma_ = env_switch("KILN_CUDA_PREFILL_MMA", true) && prefill_attention_supports_head_dim(c.head_dim);
  early_residual_ = env_switch("KILN_CUDA_EARLY_RESIDUAL", true);
  const std::string precision = e.header().value("precision", "bf16");
  if (precision != "bf16" && precision != "fp8") {
    throw Error(e.source() + ": the CUDA backend runs bf16 and fp8 engines, this one is " + precision);
  }
  fp8_ = precision == "fp8";

  const Json& autotune = e.header().contains("autotune") ? e.header()["autotune"] : Json();
  if (autotune.is_object() && autotune.contains("entries")) {
    try {
      for (const auto& entry : autotune.at("entries")) {
        if (entry.value("backend", "") != "cuda") {
          throw Error(e.source() + ": autotune entry for backend \"" + entry.value("backend", "cpu") +
                      "\" in an engine for the CUDA backend");
        }
        const std::string tactic = entry.at("tactic").get<std::string>();
        GemmChoice choice;
        // Older engines may name kiln-skinny, a tensor-core GEMM for 9..64 rows removed after it
        // never beat cuBLASLt; such an entry still carries the bucket's best cuBLASLt algorithm,
        // which runs the bucket now.
        if (tactic == "kiln-gemv") {
          choice.tactic = GemmTactic::KilnGemv;
        } else if (tactic != "cublaslt" && tactic != "kiln-skinny") {
          throw Error(e.source() + ": autotune table names GEMM tactic " + tactic + ", which this build does not have");
        }
        choice.algo = algo_from_hex(entry.at("algo").get<std::string>());
        choice.gemv_split = entry.value("gemv_split", 1);
        choice.gemv_stage_input = entry.value("gemv_stage_input", true);
        tuned_[{entry.at("n").get<int64_t>(), entry.at("k").get<int64_t>(), entry.value("dtype", "bf16")}].emplace_back(
            entry.at("bucket").get<int64_t>(), choice);
      }
    } catch (const Json::exception& ex) {
      throw Error(e.source() + ": autotune table is malformed: " + ex.what());
    }
  }
  apply_tactic_overrides(e.source());

  const RopeTable rope(c, max_seq_len_);
  const size_t rope_bytes = static_cast<size_t>(max_seq_len_ * (c.head_dim / 2)) * sizeof(float);
  rope_cos_ = DeviceBuffer(rope_bytes, "RoPE cos table");
  rope_sin_ = DeviceBuffer(rope_bytes, "RoPE sin table");
  KILN_CUDA_CHECK(cudaMemcpy(rope_cos_.get(), rope.cos(0), rope_bytes, cudaMemcpyHostToDevice));
  KILN_CUDA_CHECK(cudaMemcpy(rope_sin_.get(), rope.sin(0), rope_bytes, cudaMemcpyHostToDevice));

  const TensorView& embed = e.tensor("embed.weight");
  if (embed.shape != std::vector<int64_t>{c.vocab_size, c.hidden_size}) {
    throw Error(e.source() + ": tensor embed.weight must be [vocab_size, hidden_size]");
  }
  embed_ = static_cast<const bf16*>(upload("embed.weight", DType::BF16));
  final_norm_ = upload_optional_vector("final_norm.weight", c.hidden_size);
  const TensorView* head = e.find("lm_head.weight");
  lm_head_fp8_ = head && head->dtype == DType::F8E4M3;
  if (lm_head_fp8_) {
    if (!fp8_) throw Error(e.source() + ": an E4M3 lm_head.weight needs an fp8 engine, this one is " + precision);
    lm_head_ = projection("lm_head.weight", c.vocab_size, c.hidden_size);
  } else {
    lm_head_.weight = head ? upload("lm_head.weight", DType::BF16) : embed_;
    lm_head_.gemm = gemm_for(c.vocab_size, c.hidden_size, "bf16");
  }

  const int64_t qkv_out = c.q_dim() + 2 * c.kv_dim();
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string L = "layers." + std::to_string(i) + ".";
    Layer layer;
    layer.attn_norm = upload_optional_vector(L + "attn_norm.weight", c.hidden_size);
    layer.mlp_norm = upload_optional_vector(L + "mlp_norm.weight", c.hidden_size);
    layer.qkv_bias = upload_optional_vector(L + "qkv.bias", qkv_out);
    if (c.qk_norm) {
      layer.q_norm = upload_optional_vector(L + "q_norm.weight", c.head_dim);
      layer.k_norm = upload_optional_vector(L + "k_norm.weight", c.head_dim);
      if (!layer.q_norm || !layer.k_norm) throw Error(e.source() + ": " + L + "q_norm/k_norm weights are missing");
    }
    layer.qkv = projection(L + "qkv.weight", qkv_out, c.hidden_size);
    layer.o = projection(L + "o.weight", c.hidden_size, c.q_dim());
    layer.gate_up = projection(L + "gate_up.weight", 2 * c.intermediate_size, c.hidden_size, true);
    layer.down = projection(L + "down.weight", c.hidden_size, c.intermediate_size);
    layers_.push_back(layer);
  }
}

CudaModel::~CudaModel() {
  drop_graphs();
  if (stream_) cudaStreamDestroy(stream_);
}

KvCacheArgs CudaKvCache::layer(int64_t layer) const {
  const auto l = static_cast<size_t>(layer);
  return {keys_.get<uint8_t>() + layer * layer_bytes(), values_.get<uint8_t>() + layer * layer_bytes(), dtype_,
          k_scales_[l], v_scales_[l]};
}

CudaKvCache CudaModel::new_cache(int64_t pages, int64_t page_size, DType dtype) const {
  // An fp8 cache takes the calibrated per-layer scales of an fp8 engine (quantization.kv_scales,
  // compiler/precision.cpp); other engines carry none, and the cache keeps 1.0.
  std::vector<float> k_scales, v_scales;
  const Json& h = engine_->header();
  if (dtype == DType::F8E4M3 && h.contains("quantization") && h["quantization"].contains("kv_scales")) {
    const Json& kv = h["quantization"]["kv_scales"];
    if (!kv.is_array() || static_cast<int64_t>(kv.size()) != config().num_layers) {
      throw Error(engine_->source() + ": quantization.kv_scales must hold one entry per layer");
    }
    for (const Json& layer : kv) {
      k_scales.push_back(layer.at("k_scale").get<float>());
      v_scales.push_back(layer.at("v_scale").get<float>());
    }
  }
  return CudaKvCache(config().num_layers, pages, page_size, config().kv_dim(), dtype, std::move(k_scales),
                     std::move(v_scales));
}

void CudaModel::reserve(const StepShape& shape) {
  const ModelConfig& c = config();
  bool moved = false;
  if (shape.tokens > token_capacity_) {
    const int64_t n = round_up_pow2(shape.tokens);
    const int64_t qkv_width = c.q_dim() + 2 * c.kv_dim();
    h_ = DeviceBuffer(static_cast<size_t>(n * c.hidden_size) * 4, "activations (residual)");
    x_ = DeviceBuffer(static_cast<size_t>(n * c.hidden_size) * 2, "activations (normed)");
    qkv_ = DeviceBuffer(static_cast<size_t>(n * qkv_width) * 4, "activations (qkv)");
    attn_ = DeviceBuffer(static_cast<size_t>(n * c.q_dim()) * 2, "activations (attention)");
    gate_up_ = DeviceBuffer(static_cast<size_t>(n * 2 * c.intermediate_size) * 4, "activations (gate/up)");
    act_ = DeviceBuffer(static_cast<size_t>(n * c.intermediate_size) * 2, "activations (silu)");
    split_counters_ = DeviceBuffer(static_cast<size_t>(n * c.num_kv_heads) * 4, "decode attention counters");
    KILN_CUDA_CHECK(cudaMemsetAsync(split_counters_.get(), 0, split_counters_.bytes(), stream_));
    token_capacity_ = n;
    moved = true;
  }
  const int64_t rows = std::max<int64_t>(shape.rows, 1);
  if (rows > row_capacity_) {
    const int64_t r = round_up_pow2(rows);
    logits_ = DeviceBuffer(static_cast<size_t>(r * c.vocab_size) * 4, "logits");
    next_keys_ = DeviceBuffer(static_cast<size_t>(r) * 8, "next tokens");
    host_next_ = PinnedBuffer(static_cast<size_t>(r) * 8);
    row_capacity_ = r;
    moved = true;
  }
  const size_t partial_bytes = shape.splits > 1 ? static_cast<size_t>(shape.tokens * c.num_heads * shape.splits *
                                                                     (c.head_dim + 2)) * 4 : 0;
  if (partials_.bytes() < partial_bytes) {
    partials_ = DeviceBuffer(2 * partial_bytes, "attention split-KV partials");
    moved = true;
  }
  const size_t meta_bytes = static_cast<size_t>(shape.meta_count) * 4;
  if (meta_.bytes() < meta_bytes) {
    meta_ = DeviceBuffer(static_cast<size_t>(round_up_pow2(shape.meta_count)) * 4, "step metadata");
    host_meta_ = PinnedBuffer(meta_.bytes());
    moved = true;
  }
  // Captured graphs hold the old addresses.
  if (moved) drop_graphs();
}

void CudaModel::require_batch(int64_t rows, const std::string& what) const {
  if (rows > max_batch_) {
    throw Error(what + " " + std::to_string(rows) + " is past the engine's max_batch (" + std::to_string(max_batch_) +
                "); build it with --max-batch " + std::to_string(rows));
  }
}

void CudaModel::drop_graphs() {
  for (auto& [key, exec] : graphs_) cudaGraphExecDestroy(exec);
  graphs_.clear();
}

CudaModel::StepShape CudaModel::check_batch(const ForwardBatch& batch, const CudaKvCache& cache, bool fixed_tables) const {
  const ModelConfig& c = config();
  StepShape shape;
  shape.tokens = static_cast<int64_t>(batch.tokens.size());
  if (shape.tokens == 0 || batch.slices.empty()) throw Error("forward: the batch has no tokens");
  if (cache.layers() != c.num_layers || cache.kv_dim() != c.kv_dim()) {
    throw Error("forward: the CUDA KV cache has " + std::to_string(cache.layers()) + " layers of kv_dim " +
                std::to_string(cache.kv_dim()) + ", the model needs " + std::to_string(c.num_layers) + " of " +
                std::to_string(c.kv_dim()));
  }
  const int64_t P = cache.page_size();
  const int64_t tile_tokens = attention_tile_tokens(c.num_heads, c.num_kv_heads);
  const int64_t mma_tile_tokens = prefill_attention_tile_tokens(c.num_heads, c.num_kv_heads);
  shape.table_stride = fixed_tables ? (max_seq_len_ + P - 1) / P : 1;
  int64_t total = 0;
  int64_t mma_tiles = 0;
  bool prefill = false;
  shape.decode = decode_attention_ && decode_attention_supports(c.num_heads, c.num_kv_heads, c.head_dim);
  for (size_t s = 0; s < batch.slices.size(); ++s) {
    const SequenceSlice& slice = batch.slices[s];
    if (slice.n <= 0 || slice.start < 0 || slice.start + slice.n > max_seq_len_) {
      throw Error("forward: slice " + std::to_string(s) + " covers positions " + std::to_string(slice.start) + ".." +
                  std::to_string(slice.start + slice.n - 1) + ", outside the engine's max_seq_len (" +
                  std::to_string(max_seq_len_) + ")");
    }
    if (!slice.block_table) throw Error("forward: slice " + std::to_string(s) + " has no block table");
    const int64_t pages = (slice.start + slice.n - 1) / P + 1;
    for (int64_t page = 0; page < pages; ++page) {
      const int32_t id = slice.block_table[page];
      if (id < 0 || id >= cache.pages()) {
        throw Error("forward: slice " + std::to_string(s) + " uses page " + std::to_string(id) + " of a cache with " +
                    std::to_string(cache.pages()) + " pages");
      }
    }
    shape.table_stride = std::max(shape.table_stride, pages);
    shape.tiles += (slice.n + tile_tokens - 1) / tile_tokens;
    mma_tiles += (slice.n + mma_tile_tokens - 1) / mma_tile_tokens;
    prefill = prefill || slice.n > 1;
    shape.rows += slice.wants_logits ? 1 : 0;
    shape.decode = shape.decode && slice.n == 1;
    total += slice.n;
  }
  if (total != shape.tokens) {
    throw Error("forward: the slices cover " + std::to_string(total) + " tokens, the batch has " +
                std::to_string(shape.tokens));
  }
  shape.sequences = static_cast<int64_t>(batch.slices.size());
  shape.splits = attention_splits(shape.tiles, c.num_heads, c.num_kv_heads, multiprocessors_);
  // prefill_attention has no split-KV: it takes a step with a prefill chunk only where paged_attention's
  // tiles fill the GPU unsplit, so a step of few tiles (a short chunk among decode tokens, whose long
  // contexts want splitting) keeps paged_attention. Its decode tokens are 1-token tiles otherwise.
  // Decode-only steps never take it (their graphs, and decode_attention, stay as they are).
  shape.prefill_mma = prefill_mma_ && prefill && shape.splits == 1;
  shape.tile_tokens = tile_tokens;
  if (shape.prefill_mma) {
    shape.tiles = mma_tiles;
    shape.tile_tokens = mma_tile_tokens;
  }
  shape.meta_count = 3 * shape.tokens + 2 * shape.tiles + shape.rows + shape.sequences * shape.table_stride;
  return shape;
}

void CudaModel::pack(const ForwardBatch& batch, const StepShape& shape, int64_t page_size) {
  const ModelConfig& c = config();
  const int64_t n = shape.tokens;
  const int64_t tile_tokens = shape.tile_tokens;
  int32_t* tokens_h = host_meta_.get<int32_t>();
  int32_t* position_h = tokens_h + n;
  int32_t* sequence_h = position_h + n;
  int32_t* tiles_h = sequence_h + n;
  int32_t* rows_h = tiles_h + 2 * shape.tiles;
  int32_t* tables_h = rows_h + shape.rows;
  int64_t t = 0, tile = 0, row = 0;
  for (int64_t s = 0; s < shape.sequences; ++s) {
    const SequenceSlice& slice = batch.slices[static_cast<size_t>(s)];
    for (int64_t i = 0; i < slice.n; ++i) {
      const int32_t token = batch.tokens[static_cast<size_t>(t + i)];
      if (token < 0 || token >= c.vocab_size) {
        throw Error("forward: token id " + std::to_string(token) + " is outside the vocabulary (" +
                    std::to_string(c.vocab_size) + ")");
      }
      tokens_h[t + i] = token;
      position_h[t + i] = static_cast<int32_t>(slice.start + i);
      sequence_h[t + i] = static_cast<int32_t>(s);
    }
    for (int64_t first = 0; first < slice.n; first += tile_tokens) {
      tiles_h[2 * tile] = static_cast<int32_t>(t + first);
      tiles_h[2 * tile + 1] = static_cast<int32_t>(std::min(tile_tokens, slice.n - first));
      ++tile;
    }
    t += slice.n;
    if (slice.wants_logits) rows_h[row++] = static_cast<int32_t>(t - 1);
    const int64_t pages = (slice.start + slice.n - 1) / page_size + 1;
    std::memcpy(tables_h + s * shape.table_stride, slice.block_table, static_cast<size_t>(pages) * 4);
    std::fill(tables_h + s * shape.table_stride + pages, tables_h + (s + 1) * shape.table_stride, 0);
  }
}

void CudaModel::enqueue(const StepShape& shape, CudaKvCache& cache) {
  const ModelConfig& c = config();
  const int64_t n = shape.tokens;
  const int64_t rows = shape.rows;
  int32_t* meta = meta_.get<int32_t>();
  KILN_CUDA_CHECK(cudaMemcpyAsync(meta, host_meta_.get(), static_cast<size_t>(shape.meta_count) * 4,
                                  cudaMemcpyHostToDevice, stream_));
  const int32_t* tokens_d = meta;
  const int32_t* position_d = tokens_d + n;
  const int32_t* sequence_d = position_d + n;
  const int32_t* tiles_d = sequence_d + n;
  const int32_t* rows_d = tiles_d + 2 * shape.tiles;
  const int32_t* tables_d = rows_d + rows;

  const int64_t H = c.hidden_size;
  const int64_t qkv_width = c.q_dim() + 2 * c.kv_dim();
  const int64_t P = cache.page_size();
  const float eps = static_cast<float>(c.rms_norm_eps);
  float* h = h_.get<float>();
  // fp8 engines quantize the GEMM inputs into the same buffers (half their size).
  bf16* x = x_.get<bf16>();
  fp8* x8 = x_.get<fp8>();
  float* qkv = qkv_.get<float>();
  bf16* attn = attn_.get<bf16>();
  float* gate_up = gate_up_.get<float>();
  bf16* act = act_.get<bf16>();
  fp8* act8 = act_.get<fp8>();

  PagedStep step;
  step.tokens = n;
  step.token_sequence = sequence_d;
  step.token_position = position_d;
  step.block_tables = tables_d;
  step.table_stride = shape.table_stride;
  step.page_size = P;
  step.heads = c.num_heads;
  step.kv_heads = c.num_kv_heads;
  step.head_dim = c.head_dim;

  RopeKvArgs rope;
  rope.qkv = qkv;
  rope.norm_eps = eps;
  rope.step = step;
  rope.cos = rope_cos_.get<float>();
  rope.sin = rope_sin_.get<float>();

  AttentionArgs attention;
  attention.q = qkv;
  attention.q_stride = qkv_width;
  attention.step = step;
  attention.tiles = tiles_d;
  attention.num_tiles = shape.tiles;
  attention.window = c.sliding_window;
  attention.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  attention.out = attn;
  attention.out_fp8 = fp8_ ? attn_.get<fp8>() : nullptr;
  attention.splits = shape.splits;
  attention.partials = partials_.get<float>();

  DecodeAttentionArgs decode;
  decode.qkv = qkv;
  decode.norm_eps = eps;
  decode.step = step;
  decode.cos = rope.cos;
  decode.sin = rope.sin;
  decode.window = attention.window;
  decode.scale = attention.scale;
  decode.out = attn;
  decode.out_fp8 = attention.out_fp8;
  decode.splits = shape.splits;
  decode.partials = attention.partials;
  decode.counters = split_counters_.get<int32_t>();

  // The RMSNorm producing a projection's input (quantized for fp8), as a kernel of its own or, on the
  // GEMV path of small batches, inside the GEMV.
  const auto fuse_norm = [&](const Projection& p, int64_t m) { return p.gemm->fuses_norm(m); };
  const auto normed = [&](const float* gamma, const Projection& p) {
    GemvIn in;
    in.h = h;
    in.gamma = gamma;
    in.eps = eps;
    in.scale = p.input_scale;
    return in;
  };
  const auto norm = [&](const float* gamma, const Projection& p) {
    if (fp8_) rms_norm_to_fp8(h, nullptr, n, H, gamma, eps, p.input_scale, x8, stream_);
    else rms_norm_to_bf16(h, nullptr, n, H, gamma, eps, x, stream_);
  };
  embed_rows(embed_, tokens_d, n, H, h, stream_);
  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& layer = layers_[l];
    const auto li = static_cast<int64_t>(l);
    if (fuse_norm(layer.qkv, n)) {
      GemvOut out;
      out.y = qkv;
      layer.qkv.gemm->run_gemv(layer.qkv.weight, n, layer.qkv.alpha, normed(layer.attn_norm, layer.qkv), out, stream_);
    } else {
      norm(layer.attn_norm, layer.qkv);
      layer.qkv.run(x_.get(), n, qkv, 0.0f, stream_);
    }
    if (shape.decode) {
      decode.bias = layer.qkv_bias;
      decode.q_norm = layer.q_norm;
      decode.k_norm = layer.k_norm;
      decode.kv = cache.layer(li);
      decode.out_scale = layer.o.input_scale;
      decode_attention(decode, stream_);
    } else {
      rope.bias = layer.qkv_bias;
      rope.q_norm = layer.q_norm;
      rope.k_norm = layer.k_norm;
      rope.kv = cache.layer(li);
      rope_and_write_kv(rope, stream_);
      attention.kv = rope.kv;
      attention.out_scale = layer.o.input_scale;
      if (shape.prefill_mma) prefill_attention(attention, stream_);
      else paged_attention(attention, stream_);
    }
    // beta = 1: the projection adds onto the fp32 residual stream in the GEMM's epilogue. That stream
    // was last written by the previous residual add (or the embedding), three or more launches back,
    // so the GEMV may read it before its PDL wait (GemvOut::y_settled).
    layer.o.run(attn_.get(), n, h, 1.0f, stream_, early_residual_);
    if (layer.gate_up.gemm->gemv_at(n)) {
      // SiLU·mul in the GEMV's output, and the norm in its input where the rows fit its shared memory.
      GemvIn in;
      in.x = x_.get();
      if (fuse_norm(layer.gate_up, n)) in = normed(layer.mlp_norm, layer.gate_up);
      else norm(layer.mlp_norm, layer.gate_up);
      GemvOut out;
      out.act = act_.get();
      out.act_scale = layer.down.input_scale;
      layer.gate_up.gemm->run_gemv(layer.gate_up.weight, n, layer.gate_up.alpha, in, out, stream_);
    } else {
      norm(layer.mlp_norm, layer.gate_up);
      layer.gate_up.run(x_.get(), n, gate_up, 0.0f, stream_);
      if (fp8_) silu_mul_to_fp8(gate_up, n, c.intermediate_size, layer.down.input_scale, act8, stream_);
      else silu_mul_to_bf16(gate_up, n, c.intermediate_size, act, stream_);
    }
    // o wrote h two launches back (gate_up with the norm fused) or more (a norm kernel, or cuBLASLt's
    // gate_up and the SiLU kernel, in between).
    layer.down.run(act_.get(), n, h, 1.0f, stream_, early_residual_);
  }
  if (rows > 0) {
    if (lm_head_fp8_) rms_norm_to_fp8(h, rows_d, rows, H, final_norm_, eps, lm_head_.input_scale, x8, stream_);
    else rms_norm_to_bf16(h, rows_d, rows, H, final_norm_, eps, x, stream_);
    lm_head_.run(x_.get(), rows, logits_.get<float>(), 0.0f, stream_);
    argmax_rows(logits_.get<float>(), rows, c.vocab_size, next_keys_.get<unsigned long long>(), stream_);
    KILN_CUDA_CHECK(cudaMemcpyAsync(host_next_.get(), next_keys_.get(), static_cast<size_t>(rows) * 8,
                                    cudaMemcpyDeviceToHost, stream_));
  }
}

bool CudaModel::graphed_step(const ForwardBatch& batch) const {
  bool decode = use_graphs_;
  for (const SequenceSlice& slice : batch.slices) decode = decode && slice.n == 1 && slice.wants_logits;
  return decode;
}

CudaModel::GraphKey CudaModel::graph_key(const StepShape& shape, const CudaKvCache& cache) {
  const KvCacheArgs first = cache.layer(0);
  return GraphKey{shape.sequences, first.keys, first.values, cache.pages(), cache.page_size(), cache.dtype()};
}

CudaModel::StepShape CudaModel::graphed_shape(const ForwardBatch& batch, const CudaKvCache& cache, int replays,
                                              const char* what) const {
  if (replays < 1) throw Error(std::string(what) + ": replays must be at least 1");
  if (!graphed_step(batch)) throw Error(std::string(what) + ": the batch is not a greedy decode-only step on CUDA graphs");
  return check_batch(batch, cache, true);
}

double CudaModel::replay_decode_ms(const ForwardBatch& batch, CudaKvCache& cache, int times) {
  const StepShape shape = graphed_shape(batch, cache, times, "replay_decode_ms");
  // Looked up before reserve(): a graph of this shape exists only while the buffers it was
  // captured on still fit it (growing them drops every graph).
  const auto it = graphs_.find(graph_key(shape, cache));
  if (it == graphs_.end()) throw Error("replay_decode_ms: no decode graph of this shape yet (run forward first)");
  reserve(shape);
  pack(batch, shape, cache.page_size());
  return replay_ms(it->second, stream_, times);
}

void CudaModel::forward(const ForwardBatch& batch, CudaKvCache& cache, int32_t* next_tokens, float* logits,
                        const RowRequest* rows) {
  // A step of decode tokens only, with no logits wanted on the host, replays a CUDA graph captured
  // per batch size: one launch instead of ~10 per layer. Block tables then use a fixed stride (the
  // engine's max_seq_len in pages) so every step of that batch size has the same metadata layout;
  // the kernels read positions, pages and tokens from the metadata the graph copies in first. The
  // step's device draws run after the graph, outside it.
  const bool decode = logits == nullptr && graphed_step(batch);
  const StepShape shape = check_batch(batch, cache, decode);
  const auto want = [&](int64_t r) { return rows ? rows[r].want : logits ? RowWant::Logits : RowWant::Greedy; };
  sample_jobs_.clear();
  for (int64_t r = 0; r < shape.rows; ++r) {
    if (want(r) == RowWant::Logits && !logits) {
      throw Error("forward: row " + std::to_string(r) + " wants logits and none were given room");
    }
    if (want(r) != RowWant::Sample) continue;
    if (!(rows[r].draw.temperature > 0.0f)) throw Error("forward: a device draw needs a temperature above 0");
    sample_jobs_.push_back(SampleJob{rows[r].draw, static_cast<int32_t>(r)});
  }
  reserve(shape);
  pack(batch, shape, cache.page_size());
  if (decode) {
    const GraphKey key = graph_key(shape, cache);
    auto it = graphs_.find(key);
    if (it == graphs_.end()) {
      it = graphs_.emplace(key, capture_graph(stream_, [&] { enqueue(shape, cache); })).first;
    }
    KILN_CUDA_CHECK(cudaGraphLaunch(it->second, stream_));
  } else {
    enqueue(shape, cache);
  }
  // Only the rows the host samples from cross to it, each run of consecutive ones in one copy.
  const int64_t vocab = config().vocab_size;
  for (int64_t r = 0; r < shape.rows;) {
    if (want(r) != RowWant::Logits) {
      ++r;
      continue;
    }
    int64_t end = r + 1;
    while (end < shape.rows && want(end) == RowWant::Logits) ++end;
    KILN_CUDA_CHECK(cudaMemcpyAsync(logits + r * vocab, logits_.get<float>() + r * vocab,
                                    static_cast<size_t>((end - r) * vocab) * 4, cudaMemcpyDeviceToHost, stream_));
    r = end;
  }
  sampler_.enqueue(logits_.get<float>(), vocab, sample_jobs_, stream_);
  KILN_CUDA_CHECK(cudaStreamSynchronize(stream_));
  const auto* keys = host_next_.get<unsigned long long>();
  for (int64_t r = 0; r < shape.rows; ++r) next_tokens[r] = argmax_index(keys[r]);
  for (size_t i = 0; i < sample_jobs_.size(); ++i) next_tokens[sample_jobs_[i].row] = sampler_.tokens()[i];
}

}  // namespace kiln::cuda
