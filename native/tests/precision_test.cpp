// Number formats and the precision step: conversions round to nearest even, fp8 saturates, int8
// keeps one scale per output channel, and each tensor role gets the dtype its precision promises.
#include <gtest/gtest.h>

#include <cmath>

#include "compiler/precision.h"
#include "core/dtype.h"
#include "core/error.h"
#include "runtime/linear.h"

namespace kiln {
namespace {

TEST(DTypes, Bf16RoundsToNearestEven) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.00390625f)), 1.0f);  // exactly half way: to even
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.01171875f)), 1.015625f);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(NAN))));
}

TEST(DTypes, Fp16CoversNormalsSubnormalsAndOverflow) {
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(f32_to_f16(-3.140625f)), -3.140625f);
  for (uint32_t h = 0; h < 0x7c00; ++h) {
    ASSERT_EQ(f32_to_f16(f16_to_f32(static_cast<uint16_t>(h))), h) << h;
  }
}

TEST(DTypes, Fp8E4M3RoundTripsEveryCodeAndSaturates) {
  for (int code = 0; code < 256; ++code) {
    if ((code & 0x7f) == 0x7f) continue;
    const float v = f8e4m3_to_f32(static_cast<uint8_t>(code));
    EXPECT_EQ(f32_to_f8e4m3(v), code == 0x80 ? 0x80 : code) << code;
  }
  EXPECT_EQ(f8e4m3_to_f32(0x7e), 448.0f);
  EXPECT_EQ(f32_to_f8e4m3(1e6f), 0x7e);
  EXPECT_EQ(f32_to_f8e4m3(-1e6f), 0xfe);
  EXPECT_EQ(f8e4m3_to_f32(0x01), std::ldexp(1.0f, -9));
}

TEST(DTypes, NamesRoundTripAndUnknownNamesAreErrors) {
  for (DType d : {DType::F32, DType::F16, DType::BF16, DType::I8, DType::F8E4M3, DType::U8}) {
    EXPECT_EQ(dtype_from_name(dtype_name(d)), d);
  }
  EXPECT_THROW(dtype_from_name("f64"), Error);
}

TEST(Precision, Int8KeepsOneScalePerOutputChannel) {
  const std::vector<float> w = {1.0f, -0.5f, 0.25f, 0.0f, 100.0f, -50.0f, 25.0f, 1.0f};
  std::vector<int8_t> q(8);
  std::vector<float> scales(2);
  quantize_int8_rows(w.data(), 2, 4, q.data(), scales.data());
  EXPECT_FLOAT_EQ(scales[0], 1.0f / 127);
  EXPECT_FLOAT_EQ(scales[1], 100.0f / 127);
  EXPECT_EQ(q[0], 127);
  EXPECT_EQ(q[4], 127);
  for (size_t i = 0; i < w.size(); ++i) EXPECT_NEAR(q[i] * scales[i / 4], w[i], scales[i / 4] / 2 + 1e-6);
}

TEST(Precision, Fp8ScaleMapsAmaxToTheLargestFiniteValue) {
  EXPECT_FLOAT_EQ(fp8_scale_for(896.0f), 2.0f);
  EXPECT_EQ(fp8_scale_for(0.0f), 1.0f);
  uint8_t q;
  quantize_fp8(std::vector<float>{896.0f}.data(), 1, 2.0f, &q);
  EXPECT_EQ(q, 0x7e);
}

Graph small_graph(bool tied) {
  Graph g;
  g.config.torch_dtype = "bfloat16";
  g.weights["embed.weight"] = Weight{{4, 8}, Floats(32, 0.5f)};
  g.weights["layers.0.qkv.weight"] = Weight{{8, 8}, Floats(64, 0.25f)};
  g.weights["layers.0.qkv.bias"] = Weight{{8}, Floats(8, 0.1f)};
  g.weights["final_norm.weight"] = Weight{{8}, Floats(8, 1.0f)};
  g.nodes.push_back(Node{"embedding", "embed", {"tokens"}, "x.0", {"embed.weight"}, {}});
  g.nodes.push_back(Node{"linear", "layers.0.qkv", {"x.0"}, "q", {"layers.0.qkv.weight", "layers.0.qkv.bias"}, {}});
  g.nodes.push_back(Node{"rms_norm", "final_norm", {"q"}, "n", {"final_norm.weight"}, {}});
  if (tied) {
    g.nodes.push_back(Node{"linear", "lm_head", {"n"}, "logits", {"embed.weight"}, {}});
  } else {
    g.weights["lm_head.weight"] = Weight{{4, 8}, Floats(32, 0.5f)};
    g.nodes.push_back(Node{"linear", "lm_head", {"n"}, "logits", {"lm_head.weight"}, {}});
  }
  return g;
}

DType dtype_of(const QuantizedModel& q, const std::string& name) {
  for (const auto& t : q.tensors) {
    if (t.name == name) return t.dtype;
  }
  throw Error("no tensor " + name);
}

TEST(Precision, EachRoleGetsTheDtypeItsPrecisionPromises) {
  const Graph g = small_graph(false);
  const QuantizedModel bf16 = quantize(g, Precision::BF16, {});
  EXPECT_EQ(dtype_of(bf16, "layers.0.qkv.weight"), DType::BF16);
  EXPECT_EQ(dtype_of(bf16, "lm_head.weight"), DType::BF16);
  EXPECT_EQ(dtype_of(bf16, "layers.0.qkv.bias"), DType::F32);
  EXPECT_EQ(dtype_of(bf16, "final_norm.weight"), DType::F32);

  const QuantizedModel int8 = quantize(g, Precision::Int8Weight, {});
  EXPECT_EQ(dtype_of(int8, "layers.0.qkv.weight"), DType::I8);
  EXPECT_EQ(dtype_of(int8, "layers.0.qkv.weight.scales"), DType::F32);
  EXPECT_EQ(dtype_of(int8, "lm_head.weight"), DType::BF16);  // the checkpoint's dtype, never 8-bit
  EXPECT_EQ(dtype_of(int8, "embed.weight"), DType::BF16);

  const QuantizedModel fp8 = quantize(g, Precision::FP8, {{"layers.0.qkv.weight", 4.48f}});
  EXPECT_EQ(dtype_of(fp8, "layers.0.qkv.weight"), DType::F8E4M3);
  EXPECT_FLOAT_EQ(fp8.quantization["scales"]["layers.0.qkv.weight"]["input_scale"].get<float>(), 0.01f);
  EXPECT_EQ(fp8.quantization["activations"], "f8e4m3");
  EXPECT_THROW(quantize(g, Precision::FP8, {}), Error);  // no calibration for a quantized input
}

// fp8_lm_head: an untied lm_head is quantized in place; a tied one gets an E4M3 copy whose input
// range is the one calibration observed under the embedding's name (the weight the lm_head read).
TEST(Precision, AnFp8LmHeadTakesItsCalibratedScaleTiedOrNot) {
  const std::map<std::string, float> amax{{"layers.0.qkv.weight", 4.48f}, {"lm_head.weight", 8.96f},
                                          {"embed.weight", 17.92f}};
  const QuantizedModel untied = quantize(small_graph(false), Precision::FP8, amax, {}, nullptr, true);
  EXPECT_EQ(dtype_of(untied, "lm_head.weight"), DType::F8E4M3);
  EXPECT_EQ(dtype_of(untied, "embed.weight"), DType::BF16);
  EXPECT_FLOAT_EQ(untied.quantization["scales"]["lm_head.weight"]["input_scale"].get<float>(), 0.02f);
  EXPECT_EQ(untied.quantization["lm_head_dtype"], "f8e4m3");
  // The decoder GEMM list stays the decoder's: the build adds the logits weight itself.
  EXPECT_EQ(untied.gemm_weights, std::vector<std::string>{"layers.0.qkv.weight"});

  const QuantizedModel tied = quantize(small_graph(true), Precision::FP8, amax, {}, nullptr, true);
  EXPECT_EQ(dtype_of(tied, "lm_head.weight"), DType::F8E4M3);
  EXPECT_EQ(dtype_of(tied, "embed.weight"), DType::BF16);
  EXPECT_FLOAT_EQ(tied.quantization["scales"]["lm_head.weight"]["input_scale"].get<float>(), 0.04f);
  EXPECT_FALSE(tied.quantization["scales"].contains("embed.weight"));

  // Without it the lm_head keeps the checkpoint's dtype and the header says nothing of it.
  const QuantizedModel plain = quantize(small_graph(false), Precision::FP8, amax);
  EXPECT_EQ(dtype_of(plain, "lm_head.weight"), DType::BF16);
  EXPECT_FALSE(plain.quantization.contains("lm_head_dtype"));

  EXPECT_THROW(quantize(small_graph(false), Precision::BF16, {}, {}, nullptr, true), Error);
  EXPECT_THROW(quantize(small_graph(true), Precision::FP8, {{"layers.0.qkv.weight", 4.48f}}, {}, nullptr, true),
               Error);  // no input range observed for the lm_head
}

// On a thread pool every precision gives the bytes of the serial conversion: weights of several
// million elements (several chunks, the largest value in the last one) and a partial last chunk.
TEST(Precision, AThreadPoolGivesTheSameBytesAsOneThread) {
  Graph g = small_graph(false);
  const int64_t rows = 1100, cols = 2049;  // 2.25M elements: 3 chunks, the last partial
  Floats big(static_cast<size_t>(rows * cols));  // every element set below
  for (size_t i = 0; i < big.size(); ++i) big[i] = std::sin(static_cast<float>(i) * 0.37f) * 3.0f;
  big.back() = 40.0f;  // the amax sits in the last chunk
  g.weights["layers.0.qkv.weight"] = Weight{{rows, cols}, big};
  g.weights["lm_head.weight"] = Weight{{rows, cols}, big};
  ThreadPool pool(3);
  for (Precision p : {Precision::FP32, Precision::BF16, Precision::FP16, Precision::Int8Weight, Precision::FP8}) {
    SCOPED_TRACE(precision_name(p));
    const std::map<std::string, float> amax{{"layers.0.qkv.weight", 4.48f}};
    const QuantizedModel serial = quantize(g, p, amax);
    const QuantizedModel pooled = quantize(g, p, amax, {}, &pool);
    ASSERT_EQ(serial.tensors.size(), pooled.tensors.size());
    for (size_t i = 0; i < serial.tensors.size(); ++i) {
      EXPECT_EQ(serial.tensors[i].name, pooled.tensors[i].name);
      EXPECT_TRUE(serial.tensors[i].bytes == pooled.tensors[i].bytes) << serial.tensors[i].name;
    }
    EXPECT_EQ(serial.quantization, pooled.quantization);
  }
}

// The build's last quantize frees the graph's fp32 weights as it goes: the same tensors and header,
// no weights left, the nodes untouched.
TEST(Precision, QuantizeReleasingGivesQuantizesTensorsAndEmptiesTheWeights) {
  Graph g = small_graph(true);
  const std::map<std::string, float> amax{{"layers.0.qkv.weight", 4.48f}};
  const QuantizedModel kept = quantize(g, Precision::FP8, amax);
  const size_t nodes = g.nodes.size();
  const QuantizedModel released = quantize_releasing(g, Precision::FP8, amax);
  ASSERT_EQ(kept.tensors.size(), released.tensors.size());
  for (size_t i = 0; i < kept.tensors.size(); ++i) {
    EXPECT_EQ(kept.tensors[i].name, released.tensors[i].name);
    EXPECT_TRUE(kept.tensors[i].bytes == released.tensors[i].bytes) << kept.tensors[i].name;
  }
  EXPECT_EQ(kept.quantization, released.quantization);
  EXPECT_TRUE(g.weights.empty());
  EXPECT_EQ(g.nodes.size(), nodes);
  EXPECT_NE(g.find_node("lm_head"), nullptr);
}

// Calibration's amax of each layer's cached keys and values becomes that layer's fp8 KV scales
// (amax / 448); without them (every layer needed) the header has none and an fp8 cache uses 1.0.
TEST(Precision, Fp8EnginesRecordKvCacheScalesWhenCalibrationObservedThem) {
  Graph g = small_graph(false);
  g.config.num_layers = 1;
  const std::map<std::string, float> gemm_only{{"layers.0.qkv.weight", 4.48f}};
  EXPECT_FALSE(quantize(g, Precision::FP8, gemm_only).quantization.contains("kv_scales"));
  std::map<std::string, float> amax = gemm_only;
  amax[kv_cache_observation_name(0, false)] = 44.8f;
  amax[kv_cache_observation_name(0, true)] = 2.24f;
  const Json kv = quantize(g, Precision::FP8, amax).quantization["kv_scales"];
  ASSERT_EQ(kv.size(), 1u);
  EXPECT_FLOAT_EQ(kv[0]["k_scale"].get<float>(), 0.1f);
  EXPECT_FLOAT_EQ(kv[0]["v_scale"].get<float>(), 0.005f);
  EXPECT_FLOAT_EQ(kv[0]["k_amax"].get<float>(), 44.8f);
}

TEST(Precision, PrecisionNamesAreTheCliSpellings) {
  for (const char* name : {"fp32", "bf16", "fp16", "int8-weight", "fp8"}) {
    EXPECT_STREQ(precision_name(precision_from_name(name)), name);
  }
  EXPECT_THROW(precision_from_name("int4"), Error);
}

}  // namespace
}  // namespace kiln
