#pragma once

#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "compiler/tactics.h"
#include "core/json.h"

namespace kiln {

// The autotune table of an engine resolved to tactic pointers once, at load: for a GEMM shape the
// tactic for the smallest tuned batch bucket that holds m rows (the largest bucket beyond that).
class GemmPlan {
 public:
  // `autotune` is the engine header's "autotune" object (may be null: then default tactics).
  explicit GemmPlan(const Json& autotune);

  const GemmTactic& choose(int64_t n, int64_t k, DType dtype, WeightLayout layout, int64_t m) const;

 private:
  using Key = std::tuple<int64_t, int64_t, DType, WeightLayout>;
  std::map<Key, std::vector<std::pair<int64_t, const GemmTactic*>>> table_;
};

}  // namespace kiln
