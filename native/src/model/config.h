#pragma once

#include <cstdint>
#include <string>

#include "core/json.h"

namespace kiln {

enum class Architecture { Llama, Mistral, Qwen2, Qwen3 };

const char* architecture_name(Architecture arch);

struct RopeScaling {
  enum class Kind { None, Linear, Llama3 };
  Kind kind = Kind::None;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

// The decoder hyper-parameters every supported architecture shares, normalised from HF config.json
// (defaults exactly as transformers applies them) and carried into the engine header.
struct ModelConfig {
  Architecture architecture = Architecture::Llama;
  std::string hf_architecture;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;
  bool o_bias = false;
  bool mlp_bias = false;
  bool qk_norm = false;
  // Tokens a query may look back, itself included; 0 = unlimited.
  int64_t sliding_window = 0;
  std::string torch_dtype = "float32";

  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
};

// Parses a HF config.json; `where` names the file in errors.
ModelConfig parse_hf_config(const Json& config, const std::string& where);

Json model_config_to_json(const ModelConfig& config);
ModelConfig model_config_from_json(const Json& json);

}  // namespace kiln
