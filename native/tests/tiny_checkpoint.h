#pragma once

// Writes small random HF checkpoints from inside the tests (no Python needed) and computes a
// straightforward double-precision forward over the HF-named tensors as the reference.

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/json.h"

namespace kiln::test {

struct TinySpec {
  std::string architecture = "LlamaForCausalLM";
  int64_t vocab = 96;
  int64_t hidden = 64;
  int64_t intermediate = 128;
  int64_t layers = 2;
  int64_t heads = 4;
  int64_t kv_heads = 2;
  int64_t head_dim = 0;  // 0: hidden / heads, not written to config.json
  bool tied = false;
  std::string dtype = "F32";  // F32, BF16 or F16 in the safetensors file
  int shards = 1;             // > 1 writes model.safetensors.index.json
  Json extra_config = Json::object();
  uint32_t seed = 7;
  bool with_tokenizer = true;
};

struct HostTensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
};

using TensorMap = std::map<std::string, HostTensor>;

// A fresh empty directory under the test temp dir.
std::string temp_dir(const std::string& name);

// The HF tensors a spec implies, with random values (norm weights near 1, biases where the
// architecture has them), as the checkpoint stores them after rounding to spec.dtype.
TensorMap tiny_tensors(const TinySpec& spec);
Json tiny_config(const TinySpec& spec);

// Writes config.json, the safetensors file(s) and a tokenizer.json into `dir`.
void write_checkpoint(const std::string& dir, const TinySpec& spec, const TensorMap& tensors);
std::string write_tiny_checkpoint(const std::string& name, const TinySpec& spec);

// Raw safetensors writer: dtype "F32", "BF16" or "F16".
void write_safetensors(const std::string& path, const TensorMap& tensors, const std::string& dtype);

// Reference forward in double precision, written from the transformers semantics independently of
// the engine code: the logits at every position of `tokens` (rows of vocab).
std::vector<std::vector<double>> reference_logits(const Json& config, const TensorMap& tensors,
                                                  const std::vector<int32_t>& tokens);

}  // namespace kiln::test
