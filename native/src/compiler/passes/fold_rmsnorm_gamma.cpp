#include "compiler/passes/passes.h"

namespace kiln {

PassReport fold_rmsnorm_gamma(Graph& g, bool activations_quantized) {
  PassReport report{"fold_rmsnorm_gamma", false, ""};
  if (activations_quantized) {
    report.detail =
        "skipped: activations are quantized to fp8 after the norm, and folding would change the range (and "
        "calibrated scale) of the quantized tensor";
    return report;
  }
  int folded = 0;
  std::string skipped;
  for (auto& norm : g.nodes) {
    if (norm.op != "rms_norm" || norm.weights.empty()) continue;
    const std::vector<Node*> readers = g.consumers(norm.output);
    std::string why_not;
    if (readers.empty()) why_not = "nothing reads it";
    for (const Node* r : readers) {
      if (r->op != "linear") {
        why_not = r->name + " is not a linear";
      } else if (g.weight_readers(r->weights[0]) != 1) {
        why_not = r->name + " shares " + r->weights[0] + " with another op";
      }
    }
    if (!why_not.empty()) {
      skipped += (skipped.empty() ? "" : "; ") + norm.name + " (" + why_not + ")";
      continue;
    }
    const Weight& gamma = g.weights.at(norm.weights[0]);
    for (const Node* r : readers) {
      Weight& w = g.weights.at(r->weights[0]);
      const int64_t rows = w.shape[0];
      const int64_t cols = w.shape[1];
      for (int64_t n = 0; n < rows; ++n) {
        float* row = w.data.data() + n * cols;
        for (int64_t k = 0; k < cols; ++k) row[k] *= gamma.data[static_cast<size_t>(k)];
      }
    }
    g.weights.erase(norm.weights[0]);
    norm.weights.clear();
    ++folded;
  }
  report.applied = folded > 0;
  report.detail = "folded " + std::to_string(folded) + " norm(s)" + (skipped.empty() ? "" : "; kept " + skipped);
  return report;
}

}  // namespace kiln
