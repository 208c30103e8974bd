#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include "compiler/precision.h"

namespace kiln {

struct BuildOptions {
  std::string model_dir;    // HF checkpoint: config.json, *.safetensors, tokenizer files
  std::string out_path;     // engine.kiln
  Precision precision = Precision::BF16;
  std::string calibration_path;  // JSONL of token-id arrays; required for fp8
  // fp8 only: the lm_head in E4M3 too (quantize's fp8_lm_head), for batch-1 decode where its bf16
  // weight is a tenth of the bytes a step reads.
  bool fp8_lm_head = false;
  int64_t max_seq_len = 0;       // 0: min(max_position_embeddings, 4096)
  int64_t max_batch = 8;
  std::string toolchain_version;  // empty: this library's version
  bool autotune = true;
  int threads = 0;  // 0: one per CPU the process may use (cpu_budget)
  // "cpu", or "cuda" (the GPU of this machine; needs a build with KILN_CUDA): the backend the engine
  // is tuned for and the fingerprint it is locked to.
  std::string target = "cpu";
};

struct BuildProgress {
  std::string phase;  // load, passes, calibrate, quantize, autotune, write
  int percent = 0;    // of the whole build
  std::string message;
};

using ProgressFn = std::function<void(const BuildProgress&)>;

struct BuildResult {
  std::string path;
  std::string sha256;  // of the engine file
  uint64_t bytes = 0;
  double seconds = 0.0;
};

// Compiles a checkpoint into an engine file. Checks `cancel` between phases and inside every long
// loop, throwing kiln::Cancelled when it is set; any other failure is a kiln::Error naming its cause.
BuildResult build(const BuildOptions& options, const ProgressFn& progress, const std::atomic<bool>& cancel);

// The toolchain version recorded in engines when BuildOptions leaves it empty.
const char* library_version();

}  // namespace kiln
