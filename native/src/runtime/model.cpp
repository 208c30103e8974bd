#include "runtime/model.h"

#include <cmath>

#include "backend/cpu/ops.h"
#include "backend/cpu/paged_attention.h"
#include "core/error.h"

namespace kiln {

const float* Model::optional_vector(const std::string& name, int64_t length) const {
  const TensorView* t = engine_->find(name);
  if (!t) return nullptr;
  if (t->dtype != DType::F32 || t->shape != std::vector<int64_t>{length}) {
    throw Error(engine_->source() + ": tensor " + name + " must be f32 [" + std::to_string(length) + "]");
  }
  return reinterpret_cast<const float*>(t->data);
}

Model::Model(std::shared_ptr<const Engine> engine, ThreadPool& pool)
    : engine_(std::move(engine)), pool_(pool), plan_(engine_->header().contains("autotune") ? engine_->header()["autotune"] : Json()) {
  const Engine& e = *engine_;
  const ModelConfig& c = e.config();
  max_seq_len_ = e.limit("max_seq_len");
  rope_ = std::make_unique<RopeTable>(c, max_seq_len_);

  embed_ = &e.tensor("embed.weight");
  if (embed_->shape != std::vector<int64_t>{c.vocab_size, c.hidden_size} ||
      !(embed_->dtype == DType::F32 || embed_->dtype == DType::BF16 || embed_->dtype == DType::F16)) {
    throw Error(e.source() + ": tensor embed.weight must be f32/bf16/f16 [vocab_size, hidden_size]");
  }
  final_norm_ = optional_vector("final_norm.weight", c.hidden_size);
  const std::string head = e.find("lm_head.weight") ? "lm_head.weight" : "embed.weight";
  lm_head_ = Linear(e, head, "", c.vocab_size, c.hidden_size, plan_);

  const int64_t qkv_out = c.q_dim() + 2 * c.kv_dim();
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string L = "layers." + std::to_string(i) + ".";
    Layer layer;
    layer.attn_norm = optional_vector(L + "attn_norm.weight", c.hidden_size);
    layer.mlp_norm = optional_vector(L + "mlp_norm.weight", c.hidden_size);
    if (c.qk_norm) {
      layer.q_norm = optional_vector(L + "q_norm.weight", c.head_dim);
      layer.k_norm = optional_vector(L + "k_norm.weight", c.head_dim);
      if (!layer.q_norm || !layer.k_norm) throw Error(e.source() + ": " + L + "q_norm/k_norm weights are missing");
    }
    layer.qkv = Linear(e, L + "qkv.weight", L + "qkv.bias", qkv_out, c.hidden_size, plan_);
    layer.o = Linear(e, L + "o.weight", L + "o.bias", c.hidden_size, c.q_dim(), plan_);
    layer.gate_up = Linear(e, L + "gate_up.weight", L + "gate_up.bias", 2 * c.intermediate_size, c.hidden_size, plan_);
    layer.down = Linear(e, L + "down.weight", L + "down.bias", c.hidden_size, c.intermediate_size, plan_);
    layers_.push_back(std::move(layer));
  }
}

Model::SingleSequence Model::new_single_sequence() const {
  constexpr int64_t kPageSize = 16;
  const int64_t pages = (max_seq_len_ + kPageSize - 1) / kPageSize;
  SingleSequence s{KvCache(config().num_layers, pages, kPageSize, config().kv_dim(), DType::F32), {}};
  for (int64_t p = 0; p < pages; ++p) s.block_table.push_back(static_cast<int32_t>(p));
  return s;
}

void Model::forward(const int32_t* tokens, int64_t n, int64_t start, SingleSequence& sequence, float* logits,
                    ActivationObserver* observer) {
  if (n <= 0) throw Error("forward: no tokens");
  ForwardBatch batch;
  batch.add(tokens, n, start, sequence.block_table.data(), true);
  forward(batch, sequence.cache, logits, observer);
}

void Model::forward(const ForwardBatch& batch, KvCache& cache, float* logits, ActivationObserver* observer) {
  const ModelConfig& c = config();
  const auto n = static_cast<int64_t>(batch.tokens.size());
  if (n == 0 || batch.slices.empty()) throw Error("forward: the batch has no tokens");
  if (cache.layers() != c.num_layers || cache.kv_dim() != c.kv_dim()) {
    throw Error("forward: the KV cache has " + std::to_string(cache.layers()) + " layers of kv_dim " +
                std::to_string(cache.kv_dim()) + ", the model needs " + std::to_string(c.num_layers) + " of " +
                std::to_string(c.kv_dim()));
  }
  const int64_t P = cache.page_size();

  // Which sequence and position every token of the batch is; the page ids each slice touches are
  // checked here so the kernels can trust them.
  token_sequence_.resize(static_cast<size_t>(n));
  token_position_.resize(static_cast<size_t>(n));
  block_tables_.resize(batch.slices.size());
  int64_t t = 0;
  for (size_t s = 0; s < batch.slices.size(); ++s) {
    const SequenceSlice& slice = batch.slices[s];
    if (slice.n <= 0 || slice.start < 0 || slice.start + slice.n > max_seq_len_) {
      throw Error("forward: slice " + std::to_string(s) + " covers positions " + std::to_string(slice.start) + ".." +
                  std::to_string(slice.start + slice.n - 1) + ", outside the engine's max_seq_len (" +
                  std::to_string(max_seq_len_) + ")");
    }
    if (!slice.block_table) throw Error("forward: slice " + std::to_string(s) + " has no block table");
    for (int64_t page = 0; page <= (slice.start + slice.n - 1) / P; ++page) {
      const int32_t id = slice.block_table[page];
      if (id < 0 || id >= cache.pages()) {
        throw Error("forward: slice " + std::to_string(s) + " uses page " + std::to_string(id) + " of a cache with " +
                    std::to_string(cache.pages()) + " pages");
      }
    }
    block_tables_[s] = slice.block_table;
    for (int64_t i = 0; i < slice.n; ++i, ++t) {
      token_sequence_[static_cast<size_t>(t)] = static_cast<int32_t>(s);
      token_position_[static_cast<size_t>(t)] = slice.start + i;
    }
  }
  if (t != n) throw Error("forward: the slices cover " + std::to_string(t) + " tokens, the batch has " + std::to_string(n));

  const int64_t H = c.hidden_size;
  const int64_t qkv_width = c.q_dim() + 2 * c.kv_dim();
  const auto sized = [](std::vector<float>& v, int64_t count) {
    v.resize(static_cast<size_t>(count));
    return v.data();
  };
  float* h = sized(h_, n * H);
  float* x = sized(x_, n * H);
  float* qkv = sized(qkv_, n * qkv_width);
  float* attn = sized(attn_, n * c.q_dim());
  float* proj = sized(proj_, n * H);
  float* gate_up = sized(gate_up_, n * 2 * c.intermediate_size);
  float* act = sized(act_, n * c.intermediate_size);

  const size_t row_bytes = static_cast<size_t>(H) * dtype_size(embed_->dtype);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t token = batch.tokens[static_cast<size_t>(i)];
    if (token < 0 || token >= c.vocab_size) {
      throw Error("forward: token id " + std::to_string(token) + " is outside the vocabulary (" +
                  std::to_string(c.vocab_size) + ")");
    }
    decode_to_f32(embed_->dtype, embed_->data + row_bytes * static_cast<size_t>(token), h + i * H,
                  static_cast<size_t>(H));
  }

  const float eps = static_cast<float>(c.rms_norm_eps);
  PagedAttentionArgs args;
  args.q_stride = qkv_width;
  args.tokens = n;
  args.token_sequence = token_sequence_.data();
  args.token_position = token_position_.data();
  args.block_tables = block_tables_.data();
  args.kv_dtype = cache.dtype();
  args.page_size = P;
  args.heads = c.num_heads;
  args.kv_heads = c.num_kv_heads;
  args.head_dim = c.head_dim;
  args.window = c.sliding_window;
  args.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  args.out = attn;

  for (size_t l = 0; l < layers_.size(); ++l) {
    const Layer& layer = layers_[l];
    const auto layer_index = static_cast<int64_t>(l);
    rms_norm(h, H, x, H, n, H, layer.attn_norm, eps);
    layer.qkv.forward(x, n, qkv, pool_, scratch_, observer);
    for (int64_t i = 0; i < n; ++i) {
      float* q = qkv + i * qkv_width;
      float* k = q + c.q_dim();
      const float* v = k + c.kv_dim();
      if (layer.q_norm) {
        rms_norm(q, c.head_dim, q, c.head_dim, c.num_heads, c.head_dim, layer.q_norm, eps);
        rms_norm(k, c.head_dim, k, c.head_dim, c.num_kv_heads, c.head_dim, layer.k_norm, eps);
      }
      const int64_t pos = token_position_[static_cast<size_t>(i)];
      apply_rope(q, c.num_heads, c.head_dim, rope_->cos(pos), rope_->sin(pos));
      apply_rope(k, c.num_kv_heads, c.head_dim, rope_->cos(pos), rope_->sin(pos));
      const int32_t* table = block_tables_[static_cast<size_t>(token_sequence_[static_cast<size_t>(i)])];
      cache.write(layer_index, table[pos / P], pos % P, k, v);
      if (observer) {
        observer->observe(kv_cache_observation_name(layer_index, false), k, c.kv_dim());
        observer->observe(kv_cache_observation_name(layer_index, true), v, c.kv_dim());
      }
    }
    args.q = qkv;
    args.keys = cache.layer_keys(layer_index);
    args.values = cache.layer_values(layer_index);
    paged_attention(args, pool_);
    layer.o.forward(attn, n, proj, pool_, scratch_, observer);
    for (int64_t i = 0; i < n * H; ++i) h[i] += proj[i];

    rms_norm(h, H, x, H, n, H, layer.mlp_norm, eps);
    layer.gate_up.forward(x, n, gate_up, pool_, scratch_, observer);
    silu_mul(gate_up, n, c.intermediate_size, act);
    layer.down.forward(act, n, proj, pool_, scratch_, observer);
    for (int64_t i = 0; i < n * H; ++i) h[i] += proj[i];
  }

  // Calibration sees the lm_head's input at every token, not only at the rows that want logits
  // (a handful per calibration sequence): an fp8 lm_head's input scale comes from it.
  if (observer) {
    std::vector<float> normed(static_cast<size_t>(n * H));
    rms_norm(h, H, normed.data(), H, n, H, final_norm_, eps);
    observer->observe(lm_head_.weight_name(), normed.data(), n * H);
  }
  // The final norm and lm_head run only on the last token of each slice that wants logits.
  int64_t rows = 0;
  int64_t end = 0;
  for (const SequenceSlice& slice : batch.slices) {
    end += slice.n;
    if (!slice.wants_logits) continue;
    rms_norm(h + (end - 1) * H, H, x + rows * H, H, 1, H, final_norm_, eps);
    ++rows;
  }
  if (rows > 0) lm_head_.forward(x, rows, logits, pool_, scratch_, nullptr);
}

}  // namespace kiln
