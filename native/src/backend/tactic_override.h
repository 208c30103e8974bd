#pragma once

// KILN_CUDA_TACTIC: the engine's autotuned tactic of chosen GEMM buckets replaced at load, to measure
// a choice inside the decode graph (`bench/gpu/run.sh --ab KILN_CUDA_TACTIC=,<overrides>`) without
// building another engine. The build's race times each contender alone, and near-ties there have
// come out apart in the graph. Entries are separated by ';', each
//   <n>x<k>:<dtype>@<bucket>=cublaslt | kiln-gemv/<split>[/unstaged]
// e.g. "4096x4096:f8e4m3@1=kiln-gemv/8/unstaged;6144x4096:f8e4m3@1=cublaslt". dtype and bucket are
// as the engine's autotune table names them (`kiln-native inspect`); cublaslt runs the algorithm the
// table stored for that bucket.

#include <cstdint>
#include <string>
#include <vector>

namespace kiln {

struct TacticOverride {
  int64_t n = 0;
  int64_t k = 0;
  std::string dtype;
  int64_t bucket = 0;
  bool gemv = false;  // kiln-gemv, else cuBLASLt
  int split = 1;
  bool stage_input = true;
};

// Empty or blank text: no overrides. A malformed entry is an Error quoting it and saying what is wrong.
std::vector<TacticOverride> parse_tactic_overrides(const std::string& text);

}  // namespace kiln
