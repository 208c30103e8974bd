#include <set>

#include "compiler/passes/passes.h"

namespace kiln {

PassReport drop_unused(Graph& graph) {
  std::set<std::string> read;
  for (const auto& n : graph.nodes) read.insert(n.weights.begin(), n.weights.end());
  PassReport report{"drop_unused", false, ""};
  std::string dropped;
  int count = 0;
  for (auto it = graph.weights.begin(); it != graph.weights.end();) {
    if (read.count(it->first)) {
      ++it;
      continue;
    }
    dropped += (count++ ? ", " : "") + it->first;
    it = graph.weights.erase(it);
  }
  report.applied = count > 0;
  report.detail = count ? "dropped " + std::to_string(count) + " unread tensor(s): " + dropped : "every tensor is read";
  return report;
}

}  // namespace kiln
