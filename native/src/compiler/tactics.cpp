#include "compiler/tactics.h"

#include "backend/cpu/gemm.h"
#include "core/error.h"

namespace kiln {

const TacticRegistry& TacticRegistry::instance() {
  static const TacticRegistry registry = [] {
    TacticRegistry r;
    register_cpu_gemm_tactics(r);
    return r;
  }();
  return registry;
}

void TacticRegistry::add_gemm(GemmTactic tactic) {
  if (find_gemm(tactic.name)) throw Error("gemm tactic " + tactic.name + " registered twice");
  gemm_.push_back(std::move(tactic));
}

std::vector<const GemmTactic*> TacticRegistry::gemm_candidates(int64_t n, int64_t k) const {
  std::vector<const GemmTactic*> out;
  for (const auto& t : gemm_) {
    if (t.supports(n, k)) out.push_back(&t);
  }
  return out;
}

const GemmTactic* TacticRegistry::find_gemm(const std::string& name) const {
  for (const auto& t : gemm_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

const GemmTactic& TacticRegistry::default_gemm() const {
  const GemmTactic* t = find_gemm(kDefaultCpuGemmTactic);
  if (!t) throw Error(std::string("default gemm tactic ") + kDefaultCpuGemmTactic + " is not registered");
  return *t;
}

}  // namespace kiln
