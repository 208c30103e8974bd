// The forward pass from a built engine against the double-precision reference of the same
// checkpoint: fp32 within 1e-4 relative, bf16 within 2e-2, quantized engines keep the top-1 token.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "architectures.h"
#include "build_helpers.h"
#include "core/error.h"
#include "engine/engine.h"
#include "engine/reader.h"
#include "runtime/generate.h"
#include "runtime/model.h"

namespace kiln::test {
namespace {

const std::vector<int32_t> kPrompt = [] {
  std::vector<int32_t> p;
  for (int i = 0; i < 64; ++i) p.push_back((i * 37 + 11) % 96);
  return p;
}();

// Largest |engine - reference| over the logit row, relative to the row's largest |reference|.
double relative_error(const std::vector<float>& got, const std::vector<double>& want) {
  double err = 0;
  double scale = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    err = std::max(err, std::fabs(static_cast<double>(got[i]) - want[i]));
    scale = std::max(scale, std::fabs(want[i]));
  }
  return err / scale;
}

size_t argmax(const std::vector<double>& v) { return static_cast<size_t>(std::max_element(v.begin(), v.end()) - v.begin()); }
size_t argmax(const std::vector<float>& v) { return static_cast<size_t>(std::max_element(v.begin(), v.end()) - v.begin()); }

// <dir>/calib.jsonl: 8 sequences that cover the vocabulary, as a real calibration set covers the
// inputs served later.
void write_vocabulary_calibration(const std::string& dir, int64_t vocab) {
  std::ofstream calib(dir + "/calib.jsonl");
  for (int s = 0; s < 8; ++s) {
    Json seq = Json::array();
    for (int i = 0; i < 32; ++i) seq.push_back((s * 31 + i * 7 + 5) % vocab);
    calib << seq.dump() << "\n";
  }
}

struct Comparison {
  double max_relative_error = 0;
  double top1_agreement = 0;
};

// Runs the prompt one prefix at a time: a prefill of the first 4 tokens, then single-token decodes,
// comparing the logits at every position with the reference.
Comparison compare(const std::string& engine_path, const TinySpec& spec, const TensorMap& tensors) {
  ThreadPool pool(2);
  Model model(Engine::load(engine_path, &pool), pool);
  const auto want = reference_logits(tiny_config(spec), tensors, kPrompt);
  auto cache = model.new_single_sequence();
  std::vector<float> logits(static_cast<size_t>(spec.vocab));
  Comparison c;
  int agree = 0;
  int rows = 0;
  const int64_t prefill = 4;
  for (int64_t pos = prefill - 1; pos < static_cast<int64_t>(kPrompt.size()); ++pos) {
    if (pos == prefill - 1) {
      model.forward(kPrompt.data(), prefill, 0, cache, logits.data());
    } else {
      model.forward(&kPrompt[static_cast<size_t>(pos)], 1, pos, cache, logits.data());
    }
    c.max_relative_error = std::max(c.max_relative_error, relative_error(logits, want[static_cast<size_t>(pos)]));
    agree += argmax(logits) == argmax(want[static_cast<size_t>(pos)]);
    ++rows;
  }
  c.top1_agreement = static_cast<double>(agree) / rows;
  return c;
}

TEST(Runtime, Fp32EngineMatchesReferenceForEveryArchitecture) {
  for (const auto& c : tiny_architectures()) {
    SCOPED_TRACE(c.name);
    const TensorMap tensors = tiny_tensors(c.spec);
    const std::string dir = temp_dir(c.name);
    write_checkpoint(dir, c.spec, tensors);
    const Comparison r = compare(build_engine(dir, Precision::FP32), c.spec, tensors);
    EXPECT_LT(r.max_relative_error, 1e-4);
    EXPECT_EQ(r.top1_agreement, 1.0);
  }
}

TEST(Runtime, AutotunedPackedLayoutsGiveTheSameLogits) {
  TinySpec spec;
  const TensorMap tensors = tiny_tensors(spec);
  const std::string dir = temp_dir("m");
  write_checkpoint(dir, spec, tensors);
  const Comparison r = compare(build_engine(dir, Precision::FP32, /*autotune=*/true), spec, tensors);
  EXPECT_LT(r.max_relative_error, 1e-4);
}

TEST(Runtime, Bf16AndFp16EnginesStayWithinTwoPercent) {
  for (const auto& c : tiny_architectures()) {
    SCOPED_TRACE(c.name);
    const TensorMap tensors = tiny_tensors(c.spec);
    const std::string dir = temp_dir(c.name);
    write_checkpoint(dir, c.spec, tensors);
    EXPECT_LT(compare(build_engine(dir, Precision::BF16), c.spec, tensors).max_relative_error, 2e-2);
    EXPECT_LT(compare(build_engine(dir, Precision::FP16), c.spec, tensors).max_relative_error, 2e-2);
  }
}

TEST(Runtime, QuantizedEnginesMostlyKeepTheTopOneToken) {
  TinySpec spec;
  spec.hidden = 128;
  spec.intermediate = 256;
  const TensorMap tensors = tiny_tensors(spec);
  const std::string dir = temp_dir("m");
  write_checkpoint(dir, spec, tensors);
  write_vocabulary_calibration(dir, spec.vocab);
  const Comparison int8 = compare(build_engine(dir, Precision::Int8Weight), spec, tensors);
  const Comparison fp8 = compare(build_engine(dir, Precision::FP8, false, dir + "/calib.jsonl"), spec, tensors);
  // Measured on this random checkpoint (64 positions): int8 0.93 top-1 / 2.4% error, fp8 0.85 / 18%.
  // Random weights give flat logits, so top-1 flips on small errors; E4M3 keeps 3 mantissa bits on
  // both operands, hence fp8's larger error. The bounds leave room for summation-order noise only.
  EXPECT_GE(int8.top1_agreement, 0.9);
  EXPECT_GE(fp8.top1_agreement, 0.8);
  EXPECT_LT(int8.max_relative_error, 0.04);
  EXPECT_LT(fp8.max_relative_error, 0.25);
}

// --lm-head fp8: the logits GEMM in E4M3 too, for an lm_head of its own and for one tied to the
// embedding (which then gets an E4M3 copy as lm_head.weight, the embedding keeping its dtype).
TEST(Runtime, AnFp8LmHeadIsQuantizedAndKeepsTheFp8EnginesAccuracy) {
  for (const bool tied : {false, true}) {
    SCOPED_TRACE(tied ? "tied" : "untied");
    TinySpec spec;
    spec.hidden = 128;
    spec.intermediate = 256;
    spec.tied = tied;
    const TensorMap tensors = tiny_tensors(spec);
    const std::string dir = temp_dir(tied ? "tied" : "untied");
    write_checkpoint(dir, spec, tensors);
    write_vocabulary_calibration(dir, spec.vocab);
    BuildOptions o;
    o.model_dir = dir;
    o.out_path = dir + "/engine.fp8-head.kiln";
    o.precision = Precision::FP8;
    o.calibration_path = dir + "/calib.jsonl";
    o.fp8_lm_head = true;
    o.max_seq_len = 128;
    o.autotune = true;
    o.threads = 2;
    std::atomic<bool> cancel{false};
    build(o, {}, cancel);

    const auto e = Engine::load(o.out_path);
    EXPECT_EQ(e->tensor("lm_head.weight").dtype, DType::F8E4M3);
    EXPECT_EQ(e->tensor("embed.weight").dtype, DType::F32);  // the checkpoint's own dtype
    const Json& q = e->header()["quantization"];
    EXPECT_EQ(q["lm_head_dtype"], "f8e4m3");
    EXPECT_GT(q["scales"]["lm_head.weight"]["input_scale"].get<float>(), 0.0f);
    bool tuned = false;
    for (const auto& entry : e->header()["autotune"]["entries"]) {
      tuned = tuned || (entry["n"] == spec.vocab && entry["k"] == spec.hidden && entry["dtype"] == "f8e4m3");
    }
    EXPECT_TRUE(tuned) << "no autotune entry for the E4M3 lm_head";

    const Comparison head = compare(o.out_path, spec, tensors);
    const Comparison body = compare(build_engine(dir, Precision::FP8, false, dir + "/calib.jsonl"), spec, tensors);
    std::printf("fp8 lm_head (%s): top-1 %.3f, error %.3f; bf16 lm_head: top-1 %.3f, error %.3f\n",
                tied ? "tied" : "untied", head.top1_agreement, head.max_relative_error, body.top1_agreement,
                body.max_relative_error);
    // Measured (64 positions): untied 0.79 top-1 / 19.8% error against the bf16 lm_head's 0.85 /
    // 18.3%; tied 1.0 / 11.7% against 1.0 / 11.9%. Random weights give flat logits (see above).
    EXPECT_GE(head.top1_agreement, 0.7);
    EXPECT_LT(head.max_relative_error, 0.3);
  }
}

TEST(Runtime, PrefillAndTokenByTokenDecodeAgree) {
  TinySpec spec;
  const std::string dir = write_tiny_checkpoint("m", spec);
  ThreadPool pool(2);
  Model model(Engine::load(build_engine(dir, Precision::FP32), &pool), pool);
  std::vector<float> whole(static_cast<size_t>(spec.vocab));
  std::vector<float> stepped(whole.size());
  auto a = model.new_single_sequence();
  model.forward(kPrompt.data(), static_cast<int64_t>(kPrompt.size()), 0, a, whole.data());
  auto b = model.new_single_sequence();
  for (size_t i = 0; i < kPrompt.size(); ++i) model.forward(&kPrompt[i], 1, static_cast<int64_t>(i), b, stepped.data());
  for (size_t i = 0; i < whole.size(); ++i) EXPECT_NEAR(whole[i], stepped[i], 1e-4 * (1 + std::fabs(whole[i])));
}

TEST(Runtime, GreedyGenerationReportsTheLogitsThatChoseEachToken) {
  TinySpec spec;
  const std::string dir = write_tiny_checkpoint("m", spec);
  ThreadPool pool(2);
  Model model(Engine::load(build_engine(dir, Precision::FP32), &pool), pool);
  std::vector<std::vector<float>> rows;
  const GreedyResult r = generate_greedy(model, {1, 2, 3}, 8, [&](const float* logits, int64_t vocab) {
    rows.emplace_back(logits, logits + vocab);
  });
  ASSERT_EQ(r.tokens.size(), 8u);
  ASSERT_EQ(rows.size(), 8u);
  for (size_t i = 0; i < rows.size(); ++i) EXPECT_EQ(static_cast<int32_t>(argmax(rows[i])), r.tokens[i]);
}

// Calibration runs the compiler's fp32 graph through a borrowing engine: it must read the lender's
// bytes in place (no copy) and run exactly as the engine that owns them.
TEST(Runtime, ABorrowingEngineRunsTheLendersBytesInPlace) {
  const std::string path = build_engine(write_tiny_checkpoint("borrowing", TinySpec{}), Precision::FP32);
  const EngineFile file = read_engine_file(path);
  std::vector<TensorView> views;
  for (const auto& s : file.sections) {
    views.push_back(TensorView{s.name, s.dtype, s.shape, s.layout, file.file->data() + s.offset, s.bytes});
  }
  const auto borrowed = Engine::borrowing(file.header, views);
  for (const auto& v : views) EXPECT_EQ(borrowed->tensor(v.name).data, v.data) << v.name;
  ThreadPool pool(2);
  Model owner(Engine::load(path, &pool), pool);
  Model borrower(borrowed, pool);
  std::vector<float> a, b;
  const auto keep = [](std::vector<float>& into) {
    return [&into](const float* logits, int64_t vocab) { into.insert(into.end(), logits, logits + vocab); };
  };
  EXPECT_EQ(generate_greedy(owner, {1, 2, 3}, 8, keep(a)).tokens, generate_greedy(borrower, {1, 2, 3}, 8, keep(b)).tokens);
  EXPECT_EQ(a, b);
}

TEST(Runtime, RejectsTokensOutsideTheVocabularyAndPositionsBeyondTheLimit) {
  TinySpec spec;
  const std::string dir = write_tiny_checkpoint("m", spec);
  ThreadPool pool(1);
  Model model(Engine::load(build_engine(dir, Precision::FP32), &pool), pool);
  auto cache = model.new_single_sequence();
  std::vector<float> logits(static_cast<size_t>(spec.vocab));
  const int32_t bad = static_cast<int32_t>(spec.vocab);
  EXPECT_THROW(model.forward(&bad, 1, 0, cache, logits.data()), Error);
  const int32_t ok = 1;
  EXPECT_THROW(model.forward(&ok, 1, model.max_seq_len(), cache, logits.data()), Error);
  EXPECT_THROW(generate_greedy(model, {1}, model.max_seq_len() + 1), Error);
}

}  // namespace
}  // namespace kiln::test
