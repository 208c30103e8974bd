#pragma once

// One tiny checkpoint spec per architecture (and RoPE / tying / window variant) the compiler
// supports; suites that must hold "for every architecture" loop over these.
#include <vector>

#include "tiny_checkpoint.h"

namespace kiln::test {

struct ArchitectureCase {
  const char* name;
  TinySpec spec;
};

inline std::vector<ArchitectureCase> tiny_architectures() {
  TinySpec llama;
  TinySpec llama3 = llama;
  llama3.extra_config = Json{{"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                                               {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 16}}},
                             {"rope_theta", 500000.0}};
  TinySpec mistral;
  mistral.architecture = "MistralForCausalLM";
  mistral.extra_config = Json{{"sliding_window", 5}};
  TinySpec qwen2;
  qwen2.architecture = "Qwen2ForCausalLM";
  qwen2.tied = true;
  TinySpec qwen3;
  qwen3.architecture = "Qwen3ForCausalLM";
  qwen3.head_dim = 32;
  qwen3.heads = 4;
  qwen3.kv_heads = 1;
  TinySpec linear = llama;
  linear.extra_config = Json{{"rope_scaling", {{"type", "linear"}, {"factor", 2.0}}}};
  linear.tied = true;
  return {{"llama", llama}, {"llama3_rope", llama3}, {"mistral_window", mistral},
          {"qwen2_bias_tied", qwen2}, {"qwen3_qk_norm", qwen3}, {"linear_rope_tied", linear}};
}

}  // namespace kiln::test
