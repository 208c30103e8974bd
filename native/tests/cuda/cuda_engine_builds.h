#pragma once

// Building the tiny CUDA engines the model-level tests run: the options every such build shares, and
// an fp8 calibration file for a checkpoint's vocabulary.

#include <atomic>
#include <fstream>
#include <string>

#include "compiler/build.h"
#include "compiler/precision.h"
#include "core/json.h"
#include "tiny_checkpoint.h"

namespace kiln::test {

// The tiny Llama several CUDA model tests build: hidden 256 (head_dim 64, which every attention
// kernel takes, the tensor-core prefill included) and intermediate 512.
inline TinySpec cuda_tiny_spec() {
  TinySpec spec;
  spec.hidden = 256;
  spec.intermediate = 512;
  return spec;
}

// `spec`'s random checkpoint, written to a fresh temp dir `name`; returns the dir.
inline std::string write_tiny_checkpoint(const std::string& name, const TinySpec& spec) {
  const std::string dir = temp_dir(name);
  write_checkpoint(dir, spec, tiny_tensors(spec));
  return dir;
}

// A cuda-target build of the checkpoint in `dir` into dir/engine.cuda.kiln: 128 positions, no
// autotuning, 2 threads. Tests change what they need before build_cuda_engine(options).
inline BuildOptions cuda_build_options(const std::string& dir) {
  BuildOptions o;
  o.model_dir = dir;
  o.out_path = dir + "/engine.cuda.kiln";
  o.max_seq_len = 128;
  o.autotune = false;
  o.threads = 2;
  o.target = "cuda";
  return o;
}

inline std::string build_cuda_engine(const BuildOptions& o) {
  std::atomic<bool> cancel{false};
  build(o, {}, cancel);
  return o.out_path;
}

// `spec`'s checkpoint built autotuned for batches up to 16 (buckets 1, 8, 64); returns its options.
inline BuildOptions build_autotuned_tiny_engine(const std::string& name, const TinySpec& spec) {
  BuildOptions o = cuda_build_options(write_tiny_checkpoint(name, spec));
  o.autotune = true;
  o.max_batch = 16;
  build_cuda_engine(o);
  return o;
}

inline std::string build_cuda_engine(const std::string& dir, bool autotune, Precision precision = Precision::BF16,
                                     const std::string& calibration = "") {
  BuildOptions o = cuda_build_options(dir);
  o.autotune = autotune;
  o.precision = precision;
  o.calibration_path = calibration;
  return build_cuda_engine(o);
}

// 8 sequences of 32 token ids spread over the vocabulary, as dir/calib.jsonl; returns its path.
inline std::string write_calibration(const std::string& dir, int64_t vocab) {
  const std::string path = dir + "/calib.jsonl";
  std::ofstream calib(path);
  for (int s = 0; s < 8; ++s) {
    Json seq = Json::array();
    for (int i = 0; i < 32; ++i) seq.push_back((s * 31 + i * 7 + 5) % vocab);
    calib << seq.dump() << "\n";
  }
  return path;
}

}  // namespace kiln::test
