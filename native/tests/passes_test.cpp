// Each graph pass on its own: what it rewrites, what it leaves alone and why.
#include <gtest/gtest.h>

#include "compiler/passes/layout.h"
#include "compiler/passes/passes.h"
#include "core/error.h"
#include "model/architecture.h"
#include "model/safetensors.h"
#include "tiny_checkpoint.h"

namespace kiln::test {
namespace {

Graph graph_for(const TinySpec& spec, TensorMap extra = {}) {
  TensorMap tensors = tiny_tensors(spec);
  for (auto& [k, v] : extra) tensors[k] = v;
  const std::string dir = temp_dir("ckpt");
  write_checkpoint(dir, spec, tensors);
  const Checkpoint ckpt = Checkpoint::open(dir);
  return load_graph(parse_hf_config(tiny_config(spec), "config.json"), ckpt);
}

TEST(DropUnused, RemovesTensorsNoOpReadsAndTheTiedHeadCopy) {
  TinySpec spec;
  spec.tied = true;
  Graph g = graph_for(spec, {{"model.rotary_emb.inv_freq", HostTensor{{8}, std::vector<float>(8, 1.0f)}},
                             {"lm_head.weight", HostTensor{{96, 64}, std::vector<float>(96 * 64, 0.5f)}}});
  ASSERT_TRUE(g.weights.count("model.rotary_emb.inv_freq"));
  const PassReport r = drop_unused(g);
  EXPECT_TRUE(r.applied);
  EXPECT_FALSE(g.weights.count("model.rotary_emb.inv_freq"));
  EXPECT_FALSE(g.weights.count("lm_head.weight"));
  EXPECT_TRUE(g.weights.count("embed.weight"));
  EXPECT_NE(r.detail.find("model.rotary_emb.inv_freq"), std::string::npos);
  EXPECT_FALSE(drop_unused(g).applied);
}

TEST(FuseQkv, ConcatenatesRowsInQKVOrderAndRewiresReaders) {
  TinySpec spec;
  spec.architecture = "Qwen2ForCausalLM";  // with biases
  Graph g = graph_for(spec);
  const Weight q = g.weights.at("layers.1.q.weight");
  const Weight v = g.weights.at("layers.1.v.weight");
  const Weight kb = g.weights.at("layers.1.k.bias");
  EXPECT_TRUE(fuse_qkv(g).applied);
  EXPECT_EQ(g.find_node("layers.1.q"), nullptr);
  const Node* fused = g.find_node("layers.1.qkv");
  ASSERT_NE(fused, nullptr);
  EXPECT_EQ(fused->splits, (std::vector<int64_t>{64, 32, 32}));
  const Weight& w = g.weights.at("layers.1.qkv.weight");
  EXPECT_EQ(w.shape, (std::vector<int64_t>{128, 64}));
  EXPECT_EQ(w.data[0], q.data[0]);
  EXPECT_EQ(w.data[96 * 64], v.data[0]);
  EXPECT_EQ(g.weights.at("layers.1.qkv.bias").data[64], kb.data[0]);
  EXPECT_FALSE(g.weights.count("layers.1.q.weight"));
  const Node* attention = g.find_node("layers.1.attention");
  EXPECT_EQ(attention->inputs, (std::vector<std::string>{"layers.1.qkv.out#0", "layers.1.qkv.out#1", "layers.1.qkv.out#2"}));
}

TEST(FuseGateUp, PutsGateRowsFirst) {
  Graph g = graph_for(TinySpec{});
  const Weight up = g.weights.at("layers.0.up.weight");
  EXPECT_TRUE(fuse_gate_up(g).applied);
  const Weight& w = g.weights.at("layers.0.gate_up.weight");
  EXPECT_EQ(w.shape, (std::vector<int64_t>{256, 64}));
  EXPECT_EQ(w.data[128 * 64 + 5], up.data[5]);
  EXPECT_EQ(g.find_node("layers.0.silu_mul")->inputs,
            (std::vector<std::string>{"layers.0.gate_up.out#0", "layers.0.gate_up.out#1"}));
}

TEST(FoldRmsNormGamma, ScalesReaderColumnsAndDropsGamma) {
  Graph g = graph_for(TinySpec{});
  fuse_qkv(g);
  const float gamma3 = g.weights.at("layers.0.attn_norm.weight").data[3];
  const float w = g.weights.at("layers.0.qkv.weight").data[2 * 64 + 3];
  const PassReport r = fold_rmsnorm_gamma(g, false);
  EXPECT_TRUE(r.applied);
  EXPECT_FALSE(g.weights.count("layers.0.attn_norm.weight"));
  EXPECT_TRUE(g.find_node("layers.0.attn_norm")->weights.empty());
  EXPECT_FLOAT_EQ(g.weights.at("layers.0.qkv.weight").data[2 * 64 + 3], w * gamma3);
  EXPECT_FALSE(g.weights.count("final_norm.weight"));  // untied: folded into lm_head
}

TEST(FoldRmsNormGamma, KeepsTheFinalNormWhenLmHeadIsTheEmbedding) {
  TinySpec spec;
  spec.tied = true;
  Graph g = graph_for(spec);
  const PassReport r = fold_rmsnorm_gamma(g, false);
  EXPECT_TRUE(g.weights.count("final_norm.weight"));
  EXPECT_NE(r.detail.find("final_norm (lm_head shares embed.weight"), std::string::npos) << r.detail;
}

TEST(FoldRmsNormGamma, LeavesQwen3HeadNormsAlone) {
  TinySpec spec;
  spec.architecture = "Qwen3ForCausalLM";
  Graph g = graph_for(spec);
  fold_rmsnorm_gamma(g, false);
  EXPECT_TRUE(g.weights.count("layers.0.q_norm.weight"));
  EXPECT_TRUE(g.weights.count("layers.0.k_norm.weight"));
}

TEST(FoldRmsNormGamma, DoesNothingWhenActivationsAreQuantized) {
  Graph g = graph_for(TinySpec{});
  const PassReport r = fold_rmsnorm_gamma(g, true);
  EXPECT_FALSE(r.applied);
  EXPECT_NE(r.detail.find("fp8"), std::string::npos);
  EXPECT_TRUE(g.weights.count("layers.0.attn_norm.weight"));
}

TEST(Layout, PanelPackingRoundTripsAndInterleavesRows) {
  std::vector<uint8_t> w(16 * 24);
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<uint8_t>(i);
  const auto packed = pack_weight(WeightLayout::Panel4, w, 16, 24, 1);
  // panel 0, chunk 0: row 0 cols 0..7, then row 1 cols 0..7
  EXPECT_EQ(packed[8], w[24]);
  EXPECT_EQ(unpack_weight(WeightLayout::Panel4, packed, 16, 24, 1), w);
  EXPECT_THROW(pack_weight(WeightLayout::Panel8, std::vector<uint8_t>(12 * 24), 12, 24, 1), Error);
}

TEST(Layout, PassRewritesOnlyListedWeights) {
  std::vector<TensorBlob> blobs{{"a", DType::F32, {8, 8}, WeightLayout::Row, std::vector<uint8_t>(256, 1)},
                                {"b", DType::F32, {8, 8}, WeightLayout::Row, std::vector<uint8_t>(256, 2)}};
  const PassReport r = apply_weight_layouts(blobs, {{"a", WeightLayout::Panel8}});
  EXPECT_TRUE(r.applied);
  EXPECT_EQ(blobs[0].layout, WeightLayout::Panel8);
  EXPECT_EQ(blobs[1].layout, WeightLayout::Row);
}

}  // namespace
}  // namespace kiln::test
