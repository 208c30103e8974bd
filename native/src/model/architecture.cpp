#include "model/architecture.h"

#include <set>

#include "core/error.h"

namespace kiln {

namespace {

struct Expected {
  std::string kiln_name;
  std::string hf_name;
  std::vector<int64_t> shape;
};

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

class GraphBuilder {
 public:
  explicit GraphBuilder(Graph& g) : g_(g) {}

  void expect(const std::string& kiln, const std::string& hf, std::vector<int64_t> shape) {
    expected_.push_back({kiln, hf, std::move(shape)});
  }

  void node(std::string op, std::string name, std::vector<std::string> inputs, std::string output,
            std::vector<std::string> weights) {
    g_.nodes.push_back(Node{std::move(op), std::move(name), std::move(inputs), std::move(output), std::move(weights), {}});
  }

  // A linear layer `name` reading `input`, with the HF projection `hf` ([out, in]).
  void linear(const std::string& name, const std::string& hf, const std::string& input, int64_t out, int64_t in,
              bool bias) {
    std::vector<std::string> weights{name + ".weight"};
    expect(name + ".weight", hf + ".weight", {out, in});
    if (bias) {
      weights.push_back(name + ".bias");
      expect(name + ".bias", hf + ".bias", {out});
    }
    node("linear", name, {input}, name + ".out", std::move(weights));
  }

  void rms_norm(const std::string& op, const std::string& name, const std::string& hf, const std::string& input,
                int64_t dim) {
    expect(name + ".weight", hf + ".weight", {dim});
    node(op, name, {input}, name + ".out", {name + ".weight"});
  }

  const std::vector<Expected>& expected() const { return expected_; }

 private:
  Graph& g_;
  std::vector<Expected> expected_;
};

}  // namespace

Graph load_graph(const ModelConfig& c, const Checkpoint& ckpt, const std::function<void(size_t, size_t)>& on_tensor,
                 ThreadPool* pool) {
  Graph g;
  g.config = c;
  GraphBuilder b(g);
  const int64_t H = c.hidden_size;

  b.expect("embed.weight", "model.embed_tokens.weight", {c.vocab_size, H});
  b.node("embedding", "embed", {"tokens"}, "x.0", {"embed.weight"});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string L = "layers." + std::to_string(i);
    const std::string hf = "model.layers." + std::to_string(i);
    const std::string x = "x." + std::to_string(i);
    b.rms_norm("rms_norm", L + ".attn_norm", hf + ".input_layernorm", x, H);
    b.linear(L + ".q", hf + ".self_attn.q_proj", L + ".attn_norm.out", c.q_dim(), H, c.qkv_bias);
    b.linear(L + ".k", hf + ".self_attn.k_proj", L + ".attn_norm.out", c.kv_dim(), H, c.qkv_bias);
    b.linear(L + ".v", hf + ".self_attn.v_proj", L + ".attn_norm.out", c.kv_dim(), H, c.qkv_bias);
    std::string q = L + ".q.out";
    std::string k = L + ".k.out";
    if (c.qk_norm) {
      b.rms_norm("head_rms_norm", L + ".q_norm", hf + ".self_attn.q_norm", q, c.head_dim);
      b.rms_norm("head_rms_norm", L + ".k_norm", hf + ".self_attn.k_norm", k, c.head_dim);
      q = L + ".q_norm.out";
      k = L + ".k_norm.out";
    }
    b.node("attention", L + ".attention", {q, k, L + ".v.out"}, L + ".attention.out", {});
    b.linear(L + ".o", hf + ".self_attn.o_proj", L + ".attention.out", H, c.q_dim(), c.o_bias);
    b.node("add", L + ".attn_residual", {x, L + ".o.out"}, L + ".mid", {});
    b.rms_norm("rms_norm", L + ".mlp_norm", hf + ".post_attention_layernorm", L + ".mid", H);
    b.linear(L + ".gate", hf + ".mlp.gate_proj", L + ".mlp_norm.out", c.intermediate_size, H, c.mlp_bias);
    b.linear(L + ".up", hf + ".mlp.up_proj", L + ".mlp_norm.out", c.intermediate_size, H, c.mlp_bias);
    b.node("silu_mul", L + ".silu_mul", {L + ".gate.out", L + ".up.out"}, L + ".act", {});
    b.linear(L + ".down", hf + ".mlp.down_proj", L + ".act", H, c.intermediate_size, c.mlp_bias);
    b.node("add", L + ".mlp_residual", {L + ".mid", L + ".down.out"}, "x." + std::to_string(i + 1), {});
  }
  b.rms_norm("rms_norm", "final_norm", "model.norm", "x." + std::to_string(c.num_layers), H);
  if (c.tie_word_embeddings) {
    b.node("linear", "lm_head", {"final_norm.out"}, "logits", {"embed.weight"});
  } else {
    b.linear("lm_head", "lm_head", "final_norm.out", c.vocab_size, H, false);
  }

  const std::string who = c.hf_architecture + " checkpoint " + ckpt.directory();
  for (const auto& e : b.expected()) {
    const SourceTensor* t = ckpt.find(e.hf_name);
    if (!t) throw Error(who + ": tensor " + e.hf_name + " is missing");
    if (t->shape != e.shape) {
      throw Error(who + ": tensor " + e.hf_name + " has shape " + shape_string(t->shape) + ", expected " +
                  shape_string(e.shape) + " from config.json");
    }
    if (!t->is_float) {
      throw Error(who + ": tensor " + e.hf_name + " has dtype " + t->dtype_name + ", expected F32, F16 or BF16");
    }
  }

  std::set<std::string> mapped;
  for (const auto& e : b.expected()) mapped.insert(e.hf_name);
  const size_t total = ckpt.tensors().size();
  size_t done = 0;
  for (const auto& e : b.expected()) {
    const SourceTensor* t = ckpt.find(e.hf_name);
    g.weights[e.kiln_name] = Weight{t->shape, ckpt.to_f32(*t, pool)};
    // Decoded once: the fp32 copy replaces the mapped bytes in memory rather than joining them.
    ckpt.release(*t);
    if (on_tensor) on_tensor(++done, total);
  }
  for (const auto& [name, t] : ckpt.tensors()) {
    if (mapped.count(name)) continue;
    // Non-float leftovers (e.g. integer buffers) cannot be weights of this decoder; a float leftover
    // is kept so the drop_unused pass reports it.
    if (t.is_float && !g.weights.count(name)) {
      g.weights[name] = Weight{t.shape, ckpt.to_f32(t, pool)};
      ckpt.release(t);
    }
    if (on_tensor) on_tensor(++done, total);
  }
  return g;
}

}  // namespace kiln
