// Reading HF checkpoints: config parsing, safetensors (single and sharded), and the errors that
// name the unsupported architecture or the missing / misshapen tensor.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "model/architecture.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "tiny_checkpoint.h"

namespace kiln::test {
namespace {

std::vector<float> plain(const Floats& f) { return std::vector<float>(f.begin(), f.end()); }

std::string error_text(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Config, RefusesAnUnsupportedArchitectureNamingIt) {
  Json c = tiny_config(TinySpec{});
  c["architectures"] = {"GPT2LMHeadModel"};
  const std::string err = error_text([&] { parse_hf_config(c, "x/config.json"); });
  EXPECT_NE(err.find("x/config.json: architecture \"GPT2LMHeadModel\" is not supported"), std::string::npos) << err;
}

TEST(Config, NamesAMissingField) {
  Json c = tiny_config(TinySpec{});
  c.erase("hidden_size");
  EXPECT_NE(error_text([&] { parse_hf_config(c, "config.json"); }).find("\"hidden_size\" is missing"), std::string::npos);
}

TEST(Config, AppliesArchitectureDefaultsAsTransformersDoes) {
  TinySpec qwen2;
  qwen2.architecture = "Qwen2ForCausalLM";
  EXPECT_TRUE(parse_hf_config(tiny_config(qwen2), "c").qkv_bias);
  EXPECT_FALSE(parse_hf_config(tiny_config(qwen2), "c").o_bias);
  TinySpec qwen3;
  qwen3.architecture = "Qwen3ForCausalLM";
  qwen3.head_dim = 48;
  const ModelConfig q3 = parse_hf_config(tiny_config(qwen3), "c");
  EXPECT_TRUE(q3.qk_norm);
  EXPECT_EQ(q3.head_dim, 48);
  Json no_kv = tiny_config(TinySpec{});
  no_kv.erase("num_key_value_heads");
  EXPECT_EQ(parse_hf_config(no_kv, "c").num_kv_heads, 4);
}

TEST(Config, ReadsLlama3RopeScalingInBothSpellings) {
  Json c = tiny_config(TinySpec{});
  c["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 32.0}, {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  const ModelConfig a = parse_hf_config(c, "c");
  EXPECT_EQ(a.rope_scaling.kind, RopeScaling::Kind::Llama3);
  EXPECT_EQ(a.rope_scaling.factor, 32.0);
  c.erase("rope_scaling");
  c.erase("rope_theta");
  c["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 500000.0}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                          {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  const ModelConfig b = parse_hf_config(c, "c");
  EXPECT_EQ(b.rope_theta, 500000.0);
  EXPECT_EQ(b.rope_scaling.kind, RopeScaling::Kind::Llama3);
  c["rope_parameters"]["rope_type"] = "yarn";
  EXPECT_NE(error_text([&] { parse_hf_config(c, "c"); }).find("rope type \"yarn\" is not supported"), std::string::npos);
}

TEST(Config, RoundTripsThroughTheEngineHeader) {
  TinySpec spec;
  spec.architecture = "MistralForCausalLM";
  spec.extra_config = Json{{"sliding_window", 7}};
  const ModelConfig a = parse_hf_config(tiny_config(spec), "c");
  const ModelConfig b = model_config_from_json(model_config_to_json(a));
  EXPECT_EQ(model_config_to_json(a), model_config_to_json(b));
  EXPECT_EQ(b.sliding_window, 7);
}

TEST(Safetensors, ReadsShardedCheckpointsThroughTheIndex) {
  TinySpec spec;
  spec.shards = 3;
  spec.dtype = "BF16";
  const TensorMap tensors = tiny_tensors(spec);
  const std::string dir = temp_dir("sharded");
  write_checkpoint(dir, spec, tensors);
  const Checkpoint ckpt = Checkpoint::open(dir);
  EXPECT_EQ(ckpt.tensors().size(), tensors.size());
  const SourceTensor* t = ckpt.find("model.layers.1.mlp.up_proj.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype_name, "BF16");
  EXPECT_EQ(plain(ckpt.to_f32(*t)), tensors.at("model.layers.1.mlp.up_proj.weight").data);
}

// After release a tensor's pages are dropped, not its data: decoding it again (from the file, pages
// mapped anew), and on a pool, gives the same values; every tensor of every shard can be released.
TEST(Safetensors, ATensorDecodesTheSameAfterItsPagesAreReleased) {
  TinySpec spec;
  spec.shards = 2;
  spec.dtype = "BF16";
  spec.hidden = 256;
  spec.intermediate = 1024;  // tensors of several pages
  const TensorMap tensors = tiny_tensors(spec);
  const std::string dir = temp_dir("released");
  write_checkpoint(dir, spec, tensors);
  const Checkpoint ckpt = Checkpoint::open(dir);
  ThreadPool pool(2);
  for (const auto& [name, t] : ckpt.tensors()) {
    const std::vector<float> first = plain(ckpt.to_f32(t));
    ckpt.release(t);
    EXPECT_EQ(plain(ckpt.to_f32(t, &pool)), first) << name;
    EXPECT_EQ(first, tensors.at(name).data) << name;
  }
}

TEST(Safetensors, RefusesOffsetsOutsideTheFileAndTruncatedHeaders) {
  const std::string dir = temp_dir("bad");
  {
    std::ofstream out(dir + "/model.safetensors", std::ios::binary);
    const std::string header = R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,64]}})";
    uint64_t n = header.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out << header << std::string(16, '\0');
  }
  EXPECT_NE(error_text([&] { Checkpoint::open(dir); }).find("tensor w: data offsets lie outside the file"), std::string::npos);
  std::ofstream(dir + "/model.safetensors", std::ios::binary) << "abc";
  EXPECT_NE(error_text([&] { Checkpoint::open(dir); }).find("truncated"), std::string::npos);
  EXPECT_NE(error_text([&] { Checkpoint::open(dir + "/nowhere"); }).find("does not exist"), std::string::npos);
}

TEST(Architecture, NamesAMissingTensor) {
  TinySpec spec;
  TensorMap tensors = tiny_tensors(spec);
  tensors.erase("model.layers.1.self_attn.k_proj.weight");
  const std::string dir = temp_dir("missing");
  write_checkpoint(dir, spec, tensors);
  const std::string err = error_text([&] { load_graph(parse_hf_config(tiny_config(spec), "c"), Checkpoint::open(dir)); });
  EXPECT_NE(err.find("tensor model.layers.1.self_attn.k_proj.weight is missing"), std::string::npos) << err;
}

TEST(Architecture, NamesAMisshapenTensorWithBothShapes) {
  TinySpec spec;
  TensorMap tensors = tiny_tensors(spec);
  tensors["model.layers.0.mlp.down_proj.weight"] = HostTensor{{64, 100}, std::vector<float>(6400)};
  const std::string dir = temp_dir("misshapen");
  write_checkpoint(dir, spec, tensors);
  const std::string err = error_text([&] { load_graph(parse_hf_config(tiny_config(spec), "c"), Checkpoint::open(dir)); });
  EXPECT_NE(err.find("tensor model.layers.0.mlp.down_proj.weight has shape [64, 100], expected [64, 128]"),
            std::string::npos)
      << err;
}

TEST(Architecture, UntiedCheckpointWithoutLmHeadIsRefused) {
  TinySpec spec;
  TensorMap tensors = tiny_tensors(spec);
  tensors.erase("lm_head.weight");
  const std::string dir = temp_dir("nohead");
  write_checkpoint(dir, spec, tensors);
  EXPECT_NE(error_text([&] { load_graph(parse_hf_config(tiny_config(spec), "c"), Checkpoint::open(dir)); })
                .find("tensor lm_head.weight is missing"),
            std::string::npos);
}

}  // namespace
}  // namespace kiln::test
