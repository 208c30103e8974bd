#include "tiny_checkpoint.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/dtype.h"

namespace kiln::test {

namespace fs = std::filesystem;

std::string temp_dir(const std::string& name) {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string unique = name;
  if (info) unique = std::string(info->test_suite_name()) + "." + info->name() + "." + name;
  const fs::path dir = fs::temp_directory_path() / ("kiln-native-tests-" + std::to_string(::getpid())) / unique;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

namespace {

int64_t head_dim_of(const TinySpec& s) { return s.head_dim ? s.head_dim : s.hidden / s.heads; }

float round_to(const std::string& dtype, float v) {
  if (dtype == "BF16") return bf16_to_f32(f32_to_bf16(v));
  if (dtype == "F16") return f16_to_f32(f32_to_f16(v));
  return v;
}

}  // namespace

Json tiny_config(const TinySpec& s) {
  Json c{{"architectures", {s.architecture}},
         {"vocab_size", s.vocab},
         {"hidden_size", s.hidden},
         {"intermediate_size", s.intermediate},
         {"num_hidden_layers", s.layers},
         {"num_attention_heads", s.heads},
         {"num_key_value_heads", s.kv_heads},
         {"max_position_embeddings", 256},
         {"rms_norm_eps", 1e-5},
         {"rope_theta", 10000.0},
         {"hidden_act", "silu"},
         {"tie_word_embeddings", s.tied},
         {"torch_dtype", s.dtype == "BF16" ? "bfloat16" : s.dtype == "F16" ? "float16" : "float32"},
         {"bos_token_id", 1},
         {"eos_token_id", 2}};
  if (s.head_dim) c["head_dim"] = s.head_dim;
  for (const auto& [k, v] : s.extra_config.items()) c[k] = v;
  return c;
}

TensorMap tiny_tensors(const TinySpec& s) {
  std::mt19937 rng(s.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const Json config = tiny_config(s);
  TensorMap t;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float mean, float stddev) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    HostTensor h{std::move(shape), std::vector<float>(static_cast<size_t>(n))};
    for (float& v : h.data) v = round_to(s.dtype, mean + stddev * normal(rng));
    t[name] = std::move(h);
  };
  const int64_t hd = head_dim_of(s);
  const bool qwen2 = s.architecture == "Qwen2ForCausalLM";
  const bool qwen3 = s.architecture == "Qwen3ForCausalLM";
  const bool attention_bias = config.value("attention_bias", false);
  add("model.embed_tokens.weight", {s.vocab, s.hidden}, 0.0f, 1.0f);
  for (int64_t i = 0; i < s.layers; ++i) {
    const std::string L = "model.layers." + std::to_string(i);
    add(L + ".input_layernorm.weight", {s.hidden}, 1.0f, 0.1f);
    add(L + ".post_attention_layernorm.weight", {s.hidden}, 1.0f, 0.1f);
    const std::pair<const char*, int64_t> projections[] = {{"q", s.heads * hd}, {"k", s.kv_heads * hd}, {"v", s.kv_heads * hd}};
    for (const auto& [p, out] : projections) {
      add(L + ".self_attn." + p + "_proj.weight", {out, s.hidden}, 0.0f, 0.1f);
      if (qwen2 || attention_bias) add(L + ".self_attn." + p + "_proj.bias", {out}, 0.0f, 0.1f);
    }
    add(L + ".self_attn.o_proj.weight", {s.hidden, s.heads * hd}, 0.0f, 0.1f);
    if (attention_bias) add(L + ".self_attn.o_proj.bias", {s.hidden}, 0.0f, 0.1f);
    if (qwen3) {
      add(L + ".self_attn.q_norm.weight", {hd}, 1.0f, 0.1f);
      add(L + ".self_attn.k_norm.weight", {hd}, 1.0f, 0.1f);
    }
    add(L + ".mlp.gate_proj.weight", {s.intermediate, s.hidden}, 0.0f, 0.1f);
    add(L + ".mlp.up_proj.weight", {s.intermediate, s.hidden}, 0.0f, 0.1f);
    add(L + ".mlp.down_proj.weight", {s.hidden, s.intermediate}, 0.0f, 0.1f);
  }
  add("model.norm.weight", {s.hidden}, 1.0f, 0.1f);
  if (!s.tied) add("lm_head.weight", {s.vocab, s.hidden}, 0.0f, 0.1f);
  return t;
}

void write_safetensors(const std::string& path, const TensorMap& tensors, const std::string& dtype) {
  const size_t elem = dtype == "F32" ? 4 : 2;
  Json header = Json::object();
  std::vector<uint8_t> data;
  for (const auto& [name, t] : tensors) {
    const size_t begin = data.size();
    data.resize(begin + t.data.size() * elem);
    uint8_t* p = data.data() + begin;
    for (size_t i = 0; i < t.data.size(); ++i) {
      if (dtype == "F32") {
        std::memcpy(p + 4 * i, &t.data[i], 4);
      } else {
        const uint16_t bits = dtype == "BF16" ? f32_to_bf16(t.data[i]) : f32_to_f16(t.data[i]);
        std::memcpy(p + 2 * i, &bits, 2);
      }
    }
    header[name] = Json{{"dtype", dtype}, {"shape", t.shape}, {"data_offsets", {begin, data.size()}}};
  }
  header["__metadata__"] = Json{{"format", "pt"}};
  std::string text = header.dump();
  while ((8 + text.size()) % 8) text += ' ';
  std::ofstream out(path, std::ios::binary);
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
  out << text;
  out.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

void write_checkpoint(const std::string& dir, const TinySpec& s, const TensorMap& tensors) {
  std::ofstream(dir + "/config.json") << tiny_config(s).dump(2);
  if (s.shards <= 1) {
    write_safetensors(dir + "/model.safetensors", tensors, s.dtype);
  } else {
    std::vector<TensorMap> parts(static_cast<size_t>(s.shards));
    Json weight_map = Json::object();
    int i = 0;
    for (const auto& [name, t] : tensors) {
      const int shard = i++ % s.shards;
      parts[static_cast<size_t>(shard)][name] = t;
      char file[64];
      std::snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", shard + 1, s.shards);
      weight_map[name] = file;
    }
    for (int shard = 0; shard < s.shards; ++shard) {
      char file[64];
      std::snprintf(file, sizeof file, "model-%05d-of-%05d.safetensors", shard + 1, s.shards);
      write_safetensors(dir + "/" + file, parts[static_cast<size_t>(shard)], s.dtype);
    }
    std::ofstream(dir + "/model.safetensors.index.json") << Json{{"metadata", Json::object()}, {"weight_map", weight_map}}.dump();
  }
  if (s.with_tokenizer) {
    std::ofstream(dir + "/tokenizer.json") << R"({"version":"1.0","model":{"type":"WordLevel","vocab":{"a":0}}})";
    std::ofstream(dir + "/tokenizer_config.json")
        << Json{{"chat_template", "{% for m in messages %}{{ m.content }}{% endfor %}"}}.dump();
  }
}

std::string write_tiny_checkpoint(const std::string& name, const TinySpec& spec) {
  const std::string dir = temp_dir(name);
  write_checkpoint(dir, spec, tiny_tensors(spec));
  return dir;
}

namespace {

using Vec = std::vector<double>;

const HostTensor& get(const TensorMap& t, const std::string& name) {
  const auto it = t.find(name);
  if (it == t.end()) throw std::runtime_error("reference: missing " + name);
  return it->second;
}

// y = W x (+ b) with W [out, in]
Vec matvec(const HostTensor& w, const Vec& x, const HostTensor* bias) {
  const size_t out = static_cast<size_t>(w.shape[0]);
  const size_t in = static_cast<size_t>(w.shape[1]);
  Vec y(out);
  for (size_t o = 0; o < out; ++o) {
    double s = bias ? bias->data[o] : 0.0;
    for (size_t i = 0; i < in; ++i) s += static_cast<double>(w.data[o * in + i]) * x[i];
    y[o] = s;
  }
  return y;
}

Vec rmsnorm(const Vec& x, const float* gamma, double eps) {
  double ms = 0;
  for (double v : x) ms += v * v;
  ms /= static_cast<double>(x.size());
  const double inv = 1.0 / std::sqrt(ms + eps);
  Vec y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * inv * gamma[i];
  return y;
}

}  // namespace

std::vector<std::vector<double>> reference_logits(const Json& c, const TensorMap& t, const std::vector<int32_t>& tokens) {
  const std::string arch = c["architectures"][0];
  const int64_t H = c["hidden_size"];
  const int64_t heads = c["num_attention_heads"];
  const int64_t kv_heads = c["num_key_value_heads"];
  const int64_t hd = c.contains("head_dim") ? c["head_dim"].get<int64_t>() : H / heads;
  const int64_t layers = c["num_hidden_layers"];
  const double eps = c["rms_norm_eps"];
  const double theta = c["rope_theta"];
  const int64_t window = arch == "MistralForCausalLM" && c.contains("sliding_window") && !c["sliding_window"].is_null()
                             ? c["sliding_window"].get<int64_t>()
                             : 0;
  const bool tied = c["tie_word_embeddings"];

  std::vector<double> inv_freq(static_cast<size_t>(hd / 2));
  for (int64_t i = 0; i < hd / 2; ++i) {
    double f = 1.0 / std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(hd));
    if (c.contains("rope_scaling") && !c["rope_scaling"].is_null()) {
      const Json& rs = c["rope_scaling"];
      const std::string type = rs.value("rope_type", rs.value("type", std::string("default")));
      const double factor = rs["factor"];
      if (type == "linear") f /= factor;
      if (type == "llama3") {
        const double old = rs["original_max_position_embeddings"];
        const double lo = rs["low_freq_factor"];
        const double hi = rs["high_freq_factor"];
        const double wavelen = 2 * M_PI / f;
        if (wavelen > old / lo) {
          f /= factor;
        } else if (wavelen >= old / hi) {
          const double smooth = (old / wavelen - lo) / (hi - lo);
          f = (1 - smooth) * f / factor + smooth * f;
        }
      }
    }
    inv_freq[static_cast<size_t>(i)] = f;
  }
  auto rope = [&](double* v, int64_t pos) {
    for (int64_t i = 0; i < hd / 2; ++i) {
      const double a = static_cast<double>(pos) * inv_freq[static_cast<size_t>(i)];
      const double x1 = v[i];
      const double x2 = v[i + hd / 2];
      v[i] = x1 * std::cos(a) - x2 * std::sin(a);
      v[i + hd / 2] = x2 * std::cos(a) + x1 * std::sin(a);
    }
  };

  const size_t n = tokens.size();
  const HostTensor& embed = get(t, "model.embed_tokens.weight");
  std::vector<Vec> h(n, Vec(static_cast<size_t>(H)));
  for (size_t p = 0; p < n; ++p) {
    for (int64_t i = 0; i < H; ++i) h[p][static_cast<size_t>(i)] = embed.data[static_cast<size_t>(tokens[p] * H + i)];
  }
  auto opt = [&](const std::string& name) -> const HostTensor* {
    const auto it = t.find(name);
    return it == t.end() ? nullptr : &it->second;
  };
  for (int64_t l = 0; l < layers; ++l) {
    const std::string L = "model.layers." + std::to_string(l);
    std::vector<Vec> q(n), k(n), v(n);
    for (size_t p = 0; p < n; ++p) {
      const Vec x = rmsnorm(h[p], get(t, L + ".input_layernorm.weight").data.data(), eps);
      q[p] = matvec(get(t, L + ".self_attn.q_proj.weight"), x, opt(L + ".self_attn.q_proj.bias"));
      k[p] = matvec(get(t, L + ".self_attn.k_proj.weight"), x, opt(L + ".self_attn.k_proj.bias"));
      v[p] = matvec(get(t, L + ".self_attn.v_proj.weight"), x, opt(L + ".self_attn.v_proj.bias"));
      for (int64_t hh = 0; hh < heads; ++hh) {
        double* qh = q[p].data() + hh * hd;
        if (const HostTensor* qn = opt(L + ".self_attn.q_norm.weight")) {
          const Vec normed = rmsnorm(Vec(qh, qh + hd), qn->data.data(), eps);
          std::copy(normed.begin(), normed.end(), qh);
        }
        rope(qh, static_cast<int64_t>(p));
      }
      for (int64_t hh = 0; hh < kv_heads; ++hh) {
        double* kh = k[p].data() + hh * hd;
        if (const HostTensor* kn = opt(L + ".self_attn.k_norm.weight")) {
          const Vec normed = rmsnorm(Vec(kh, kh + hd), kn->data.data(), eps);
          std::copy(normed.begin(), normed.end(), kh);
        }
        rope(kh, static_cast<int64_t>(p));
      }
    }
    for (size_t p = 0; p < n; ++p) {
      Vec attn(static_cast<size_t>(heads * hd), 0.0);
      for (int64_t hh = 0; hh < heads; ++hh) {
        const int64_t g = hh / (heads / kv_heads);
        const size_t first = window > 0 && static_cast<int64_t>(p) - window + 1 > 0 ? p - static_cast<size_t>(window) + 1 : 0;
        std::vector<double> s;
        double mx = -1e300;
        for (size_t j = first; j <= p; ++j) {
          double d = 0;
          for (int64_t e = 0; e < hd; ++e) d += q[p][static_cast<size_t>(hh * hd + e)] * k[j][static_cast<size_t>(g * hd + e)];
          s.push_back(d / std::sqrt(static_cast<double>(hd)));
          mx = std::max(mx, s.back());
        }
        double total = 0;
        for (double& x : s) total += (x = std::exp(x - mx));
        for (size_t j = first; j <= p; ++j) {
          for (int64_t e = 0; e < hd; ++e) {
            attn[static_cast<size_t>(hh * hd + e)] += s[j - first] / total * v[j][static_cast<size_t>(g * hd + e)];
          }
        }
      }
      const Vec o = matvec(get(t, L + ".self_attn.o_proj.weight"), attn, opt(L + ".self_attn.o_proj.bias"));
      for (int64_t i = 0; i < H; ++i) h[p][static_cast<size_t>(i)] += o[static_cast<size_t>(i)];
      const Vec x = rmsnorm(h[p], get(t, L + ".post_attention_layernorm.weight").data.data(), eps);
      const Vec gate = matvec(get(t, L + ".mlp.gate_proj.weight"), x, nullptr);
      const Vec up = matvec(get(t, L + ".mlp.up_proj.weight"), x, nullptr);
      Vec a(gate.size());
      for (size_t i = 0; i < a.size(); ++i) a[i] = gate[i] / (1 + std::exp(-gate[i])) * up[i];
      const Vec d = matvec(get(t, L + ".mlp.down_proj.weight"), a, nullptr);
      for (int64_t i = 0; i < H; ++i) h[p][static_cast<size_t>(i)] += d[static_cast<size_t>(i)];
    }
  }
  std::vector<Vec> logits;
  const HostTensor& head = tied ? embed : get(t, "lm_head.weight");
  for (size_t p = 0; p < n; ++p) {
    logits.push_back(matvec(head, rmsnorm(h[p], get(t, "model.norm.weight").data.data(), eps), nullptr));
  }
  return logits;
}

}  // namespace kiln::test
