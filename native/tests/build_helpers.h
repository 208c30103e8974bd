#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "compiler/build.h"
#include "core/error.h"
#include "tiny_checkpoint.h"

namespace kiln::test {

// Builds `model_dir` into <dir>/engine.<precision>.kiln with a small seq limit; returns the path.
inline std::string build_engine(const std::string& model_dir, Precision precision, bool autotune = false,
                                const std::string& calibration = "", std::vector<BuildProgress>* progress = nullptr) {
  BuildOptions o;
  o.model_dir = model_dir;
  o.out_path = model_dir + "/engine." + precision_name(precision) + ".kiln";
  o.precision = precision;
  o.max_seq_len = 128;
  o.autotune = autotune;
  o.threads = 2;
  o.calibration_path = calibration;
  std::atomic<bool> cancel{false};
  build(o, [&](const BuildProgress& p) { if (progress) progress->push_back(p); }, cancel);
  return o.out_path;
}

// The error build(o) throws, or "" when it builds: for the input checks.
inline std::string build_error(const BuildOptions& o) {
  std::atomic<bool> cancel{false};
  try {
    build(o, {}, cancel);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A bf16 build of a fresh tiny checkpoint into <dir>/engine.kiln, for changing one option.
inline BuildOptions tiny_build_options(const std::string& name) {
  const std::string dir = write_tiny_checkpoint(name, TinySpec{});
  BuildOptions o;
  o.model_dir = dir;
  o.out_path = dir + "/engine.kiln";
  o.precision = Precision::BF16;
  return o;
}

}  // namespace kiln::test
