#include "model/config.h"

#include "core/error.h"

namespace kiln {

namespace {

struct ArchitectureName {
  const char* hf;
  Architecture arch;
};

constexpr ArchitectureName kArchitectures[] = {
    {"LlamaForCausalLM", Architecture::Llama},
    {"MistralForCausalLM", Architecture::Mistral},
    {"Qwen2ForCausalLM", Architecture::Qwen2},
    {"Qwen3ForCausalLM", Architecture::Qwen3},
};

class Fields {
 public:
  Fields(const Json& json, const std::string& where) : json_(json), where_(where) {}

  bool has(const char* key) const { return json_.contains(key) && !json_.at(key).is_null(); }

  int64_t integer(const char* key) const {
    if (!has(key)) throw Error(where_ + ": field \"" + key + "\" is missing");
    const Json& v = json_.at(key);
    if (!v.is_number_integer()) throw Error(where_ + ": field \"" + key + "\" must be an integer");
    const int64_t value = v.get<int64_t>();
    if (value <= 0) throw Error(where_ + ": field \"" + key + "\" must be positive, got " + v.dump());
    return value;
  }

  int64_t integer_or(const char* key, int64_t fallback) const { return has(key) ? integer(key) : fallback; }

  double number_or(const char* key, double fallback) const {
    if (!has(key)) return fallback;
    const Json& v = json_.at(key);
    if (!v.is_number()) throw Error(where_ + ": field \"" + key + "\" must be a number");
    return v.get<double>();
  }

  bool boolean_or(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    const Json& v = json_.at(key);
    if (!v.is_boolean()) throw Error(where_ + ": field \"" + key + "\" must be true or false");
    return v.get<bool>();
  }

  std::string string_or(const char* key, const std::string& fallback) const {
    if (!has(key)) return fallback;
    const Json& v = json_.at(key);
    if (!v.is_string()) throw Error(where_ + ": field \"" + key + "\" must be a string");
    return v.get<std::string>();
  }

 private:
  const Json& json_;
  const std::string& where_;
};

RopeScaling parse_rope_scaling(const Json& scaling, const std::string& where) {
  RopeScaling out;
  if (scaling.is_null()) return out;
  if (!scaling.is_object()) throw Error(where + ": rope_scaling must be an object or null");
  const std::string field = where + " rope_scaling";
  Fields f(scaling, field);
  // Older configs spell the kind "type", newer ones "rope_type".
  const std::string kind = f.string_or("rope_type", f.string_or("type", "default"));
  if (kind == "default") return out;
  if (kind == "linear") {
    out.kind = RopeScaling::Kind::Linear;
    out.factor = f.number_or("factor", 1.0);
  } else if (kind == "llama3") {
    out.kind = RopeScaling::Kind::Llama3;
    out.factor = f.number_or("factor", 8.0);
    out.low_freq_factor = f.number_or("low_freq_factor", 1.0);
    out.high_freq_factor = f.number_or("high_freq_factor", 4.0);
    out.original_max_position_embeddings = f.integer_or("original_max_position_embeddings", 8192);
    if (out.high_freq_factor == out.low_freq_factor) {
      throw Error(field + ": high_freq_factor must differ from low_freq_factor");
    }
  } else {
    throw Error(field + ": rope type \"" + kind + "\" is not supported (supported: default, linear, llama3)");
  }
  if (!(out.factor > 0)) throw Error(field + ": factor must be positive");
  return out;
}

}  // namespace

const char* architecture_name(Architecture arch) {
  for (const auto& a : kArchitectures) {
    if (a.arch == arch) return a.hf;
  }
  return "?";
}

ModelConfig parse_hf_config(const Json& config, const std::string& where) {
  if (!config.is_object()) throw Error(where + ": not a JSON object");
  ModelConfig c;
  if (!config.contains("architectures") || !config["architectures"].is_array() ||
      config["architectures"].empty() || !config["architectures"][0].is_string()) {
    throw Error(where + ": field \"architectures\" is missing or empty");
  }
  c.hf_architecture = config["architectures"][0].get<std::string>();
  bool known = false;
  for (const auto& a : kArchitectures) {
    if (c.hf_architecture == a.hf) {
      c.architecture = a.arch;
      known = true;
    }
  }
  if (!known) {
    throw Error(where + ": architecture \"" + c.hf_architecture +
                "\" is not supported (supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, "
                "Qwen3ForCausalLM)");
  }

  Fields f(config, where);
  const std::string act = f.string_or("hidden_act", "silu");
  if (act != "silu") throw Error(where + ": hidden_act \"" + act + "\" is not supported (only silu)");

  c.vocab_size = f.integer("vocab_size");
  c.hidden_size = f.integer("hidden_size");
  c.intermediate_size = f.integer("intermediate_size");
  c.num_layers = f.integer("num_hidden_layers");
  c.num_heads = f.integer("num_attention_heads");
  c.num_kv_heads = f.integer_or("num_key_value_heads", c.num_heads);
  c.head_dim = f.integer_or("head_dim", c.hidden_size / c.num_heads);
  c.max_position_embeddings = f.integer_or("max_position_embeddings", 2048);
  c.rms_norm_eps = f.number_or("rms_norm_eps", 1e-6);
  c.tie_word_embeddings = f.boolean_or("tie_word_embeddings", false);
  c.torch_dtype = f.string_or("torch_dtype", f.string_or("dtype", "float32"));

  // transformers 5 moves rope_theta and the scaling into one "rope_parameters" object.
  if (f.has("rope_parameters")) {
    const Json& params = config["rope_parameters"];
    Fields p(params, where + " rope_parameters");
    c.rope_theta = p.number_or("rope_theta", 10000.0);
    c.rope_scaling = parse_rope_scaling(params, where);
  } else {
    c.rope_theta = f.number_or("rope_theta", 10000.0);
    if (config.contains("rope_scaling")) c.rope_scaling = parse_rope_scaling(config["rope_scaling"], where);
  }

  if (c.num_heads % c.num_kv_heads != 0) {
    throw Error(where + ": num_attention_heads (" + std::to_string(c.num_heads) +
                ") must be a multiple of num_key_value_heads (" + std::to_string(c.num_kv_heads) + ")");
  }
  if (c.head_dim % 2 != 0) throw Error(where + ": head_dim (" + std::to_string(c.head_dim) + ") must be even");

  switch (c.architecture) {
    case Architecture::Llama:
      c.qkv_bias = c.o_bias = f.boolean_or("attention_bias", false);
      c.mlp_bias = f.boolean_or("mlp_bias", false);
      break;
    case Architecture::Mistral:
      c.sliding_window = f.integer_or("sliding_window", 0);
      break;
    case Architecture::Qwen2:
      c.qkv_bias = true;
      break;
    case Architecture::Qwen3:
      c.qkv_bias = c.o_bias = f.boolean_or("attention_bias", false);
      c.qk_norm = true;
      break;
  }
  if ((c.architecture == Architecture::Qwen2 || c.architecture == Architecture::Qwen3) &&
      f.boolean_or("use_sliding_window", false)) {
    throw Error(where + ": use_sliding_window=true is not supported for " + c.hf_architecture);
  }
  return c;
}

Json model_config_to_json(const ModelConfig& c) {
  Json rope = {{"type", "default"}};
  if (c.rope_scaling.kind == RopeScaling::Kind::Linear) {
    rope = {{"type", "linear"}, {"factor", c.rope_scaling.factor}};
  } else if (c.rope_scaling.kind == RopeScaling::Kind::Llama3) {
    rope = {{"type", "llama3"},
            {"factor", c.rope_scaling.factor},
            {"low_freq_factor", c.rope_scaling.low_freq_factor},
            {"high_freq_factor", c.rope_scaling.high_freq_factor},
            {"original_max_position_embeddings", c.rope_scaling.original_max_position_embeddings}};
  }
  return Json{{"architecture", c.hf_architecture},
              {"vocab_size", c.vocab_size},
              {"hidden_size", c.hidden_size},
              {"intermediate_size", c.intermediate_size},
              {"num_layers", c.num_layers},
              {"num_heads", c.num_heads},
              {"num_kv_heads", c.num_kv_heads},
              {"head_dim", c.head_dim},
              {"max_position_embeddings", c.max_position_embeddings},
              {"rms_norm_eps", c.rms_norm_eps},
              {"rope_theta", c.rope_theta},
              {"rope_scaling", rope},
              {"tie_word_embeddings", c.tie_word_embeddings},
              {"qkv_bias", c.qkv_bias},
              {"o_bias", c.o_bias},
              {"mlp_bias", c.mlp_bias},
              {"qk_norm", c.qk_norm},
              {"sliding_window", c.sliding_window},
              {"torch_dtype", c.torch_dtype}};
}

ModelConfig model_config_from_json(const Json& j) {
  const std::string where = "engine header model";
  if (!j.is_object()) throw Error(where + ": not an object");
  try {
    ModelConfig c;
    c.hf_architecture = j.at("architecture").get<std::string>();
    bool known = false;
    for (const auto& a : kArchitectures) {
      if (c.hf_architecture == a.hf) {
        c.architecture = a.arch;
        known = true;
      }
    }
    if (!known) throw Error(where + ": unknown architecture \"" + c.hf_architecture + "\"");
    c.vocab_size = j.at("vocab_size").get<int64_t>();
    c.hidden_size = j.at("hidden_size").get<int64_t>();
    c.intermediate_size = j.at("intermediate_size").get<int64_t>();
    c.num_layers = j.at("num_layers").get<int64_t>();
    c.num_heads = j.at("num_heads").get<int64_t>();
    c.num_kv_heads = j.at("num_kv_heads").get<int64_t>();
    c.head_dim = j.at("head_dim").get<int64_t>();
    c.max_position_embeddings = j.at("max_position_embeddings").get<int64_t>();
    c.rms_norm_eps = j.at("rms_norm_eps").get<double>();
    c.rope_theta = j.at("rope_theta").get<double>();
    c.rope_scaling = parse_rope_scaling(j.at("rope_scaling"), where);
    c.tie_word_embeddings = j.at("tie_word_embeddings").get<bool>();
    c.qkv_bias = j.at("qkv_bias").get<bool>();
    c.o_bias = j.at("o_bias").get<bool>();
    c.mlp_bias = j.at("mlp_bias").get<bool>();
    c.qk_norm = j.at("qk_norm").get<bool>();
    c.sliding_window = j.at("sliding_window").get<int64_t>();
    c.torch_dtype = j.at("torch_dtype").get<std::string>();
    for (int64_t v : {c.vocab_size, c.hidden_size, c.intermediate_size, c.num_layers, c.num_heads, c.num_kv_heads,
                      c.head_dim}) {
      if (v <= 0 || v > (int64_t{1} << 24)) throw Error(where + ": a dimension is out of range");
    }
    if (c.num_heads % c.num_kv_heads != 0) throw Error(where + ": num_heads must be a multiple of num_kv_heads");
    return c;
  } catch (const Json::exception& e) {
    throw Error(where + ": " + e.what());
  }
}

}  // namespace kiln
