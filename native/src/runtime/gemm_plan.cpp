#include "runtime/gemm_plan.h"

#include <algorithm>

#include "core/error.h"

namespace kiln {

GemmPlan::GemmPlan(const Json& autotune) {
  if (!autotune.is_object() || !autotune.contains("entries")) return;
  const auto& registry = TacticRegistry::instance();
  try {
    for (const auto& e : autotune.at("entries")) {
      const std::string name = e.at("tactic").get<std::string>();
      const GemmTactic* t = registry.find_gemm(name);
      if (!t) throw Error("autotune table names tactic " + name + ", which this build does not have");
      const Key key{e.at("n").get<int64_t>(), e.at("k").get<int64_t>(), dtype_from_name(e.at("dtype").get<std::string>()),
                    layout_from_name(e.at("layout").get<std::string>())};
      if (t->layout != std::get<3>(key)) throw Error("autotune table pairs tactic " + name + " with another layout");
      table_[key].emplace_back(e.at("bucket").get<int64_t>(), t);
    }
  } catch (const Json::exception& ex) {
    throw Error(std::string("engine header autotune table is malformed: ") + ex.what());
  }
  for (auto& [key, buckets] : table_) std::sort(buckets.begin(), buckets.end());
}

const GemmTactic& GemmPlan::choose(int64_t n, int64_t k, DType dtype, WeightLayout layout, int64_t m) const {
  const auto it = table_.find(Key{n, k, dtype, layout});
  if (it == table_.end()) {
    const auto& registry = TacticRegistry::instance();
    if (layout == WeightLayout::Row) return registry.default_gemm();
    for (const auto& t : registry.gemm()) {
      if (t.layout == layout && t.threads == 0) return t;
    }
    throw Error(std::string("no gemm tactic reads layout ") + layout_name(layout));
  }
  for (const auto& [bucket, tactic] : it->second) {
    if (m <= bucket) return *tactic;
  }
  return *it->second.back().second;
}

}  // namespace kiln
