// kiln::build end to end: progress phases, autotune table, cancellation and input errors.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "build_helpers.h"
#include "core/error.h"
#include "engine/engine.h"
#include "engine/reader.h"

namespace kiln::test {
namespace {

TEST(Build, ReportsEveryPhaseInOrderWithRisingPercent) {
  const std::string dir = write_tiny_checkpoint("m", TinySpec{});
  std::ofstream(dir + "/calib.jsonl") << "[1,2,3,4]\n[5,6,7]\n";
  std::vector<BuildProgress> progress;
  build_engine(dir, Precision::FP8, true, dir + "/calib.jsonl", &progress);
  std::vector<std::string> phases;
  int last = 0;
  for (const auto& p : progress) {
    if (phases.empty() || phases.back() != p.phase) phases.push_back(p.phase);
    EXPECT_GE(p.percent, last);
    last = p.percent;
  }
  EXPECT_EQ(phases, (std::vector<std::string>{"load", "passes", "calibrate", "quantize", "autotune", "write"}));
}

TEST(Build, RecordsTheAutotuneWinnerForEveryShapeAndBucket) {
  const std::string dir = write_tiny_checkpoint("m", TinySpec{});
  auto e = Engine::load(build_engine(dir, Precision::BF16, true));
  const Json& table = e->header()["autotune"];
  EXPECT_TRUE(table["enabled"].get<bool>());
  // qkv, o, gate_up, down and lm_head shapes x buckets 1, 8, 64
  EXPECT_EQ(table["entries"].size(), 5u * 3u);
  for (const auto& entry : table["entries"]) {
    EXPECT_GT(entry["us"].get<double>(), 0.0);
    EXPECT_TRUE(entry["candidates"].contains(entry["tactic"].get<std::string>()));
  }
  const std::string layout = layout_name(e->tensor("layers.0.qkv.weight").layout);
  for (const auto& entry : table["entries"]) {
    if (entry["n"] == 128 && entry["k"] == 64) EXPECT_EQ(entry["layout"], layout);
  }
}

TEST(Build, RecordsPassesQuantizationAndLimitsInTheHeader) {
  const std::string dir = write_tiny_checkpoint("m", TinySpec{});
  auto e = Engine::load(build_engine(dir, Precision::Int8Weight));
  const Json& h = e->header();
  std::vector<std::string> passes;
  for (const auto& p : h["passes"]) passes.push_back(p["name"]);
  EXPECT_EQ(passes, (std::vector<std::string>{"drop_unused", "fuse_qkv", "fuse_gate_up", "fold_rmsnorm_gamma", "layout"}));
  EXPECT_EQ(h["limits"]["max_seq_len"], 128);
  EXPECT_EQ(h["special_tokens"]["eos_token_id"], 2);
  EXPECT_EQ(h["quantization"]["gemm_dtype"], "i8");
  EXPECT_FALSE(h["toolchain_version"].get<std::string>().empty());
}

TEST(Build, Fp8WithoutCalibrationFailsBeforeLoadingAnything) {
  BuildOptions o;
  o.model_dir = "/nonexistent";
  o.out_path = "/nonexistent/e.kiln";
  o.precision = Precision::FP8;
  std::atomic<bool> cancel{false};
  try {
    build(o, {}, cancel);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fp8 needs --calibration"), std::string::npos);
  }
}

TEST(Build, AnFp8LmHeadNeedsTheFp8Precision) {
  BuildOptions o = tiny_build_options("m");
  o.fp8_lm_head = true;
  const std::string error = build_error(o);
  EXPECT_NE(error.find("--lm-head fp8 needs --precision fp8"), std::string::npos) << error;
  EXPECT_FALSE(std::filesystem::exists(o.out_path));
}

TEST(Build, CalibrationErrorsNameTheLine) {
  const std::string dir = write_tiny_checkpoint("m", TinySpec{});
  std::ofstream(dir + "/calib.jsonl") << "[1,2]\n[3, 9999]\n";
  try {
    build_engine(dir, Precision::FP8, false, dir + "/calib.jsonl");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("calib.jsonl:2: token id 9999"), std::string::npos) << e.what();
  }
}

TEST(Build, CancellingStopsTheBuildAndLeavesNoFile) {
  const BuildOptions o = tiny_build_options("m");
  std::atomic<bool> cancel{false};
  EXPECT_THROW(build(o,
                     [&](const BuildProgress& p) {
                       if (p.phase == "autotune") cancel = true;
                     },
                     cancel),
               Cancelled);
  EXPECT_FALSE(std::filesystem::exists(o.out_path));
  EXPECT_FALSE(std::filesystem::exists(o.out_path + ".tmp"));
}

}  // namespace
}  // namespace kiln::test
