#include "compiler/passes/layout.h"

namespace kiln {

PassReport apply_weight_layouts(std::vector<TensorBlob>& tensors, const std::map<std::string, WeightLayout>& layouts) {
  std::map<std::string, int> counts;
  for (auto& t : tensors) {
    const auto it = layouts.find(t.name);
    if (it == layouts.end() || it->second == t.layout) continue;
    t.bytes = pack_weight(it->second, t.bytes, t.shape[0], t.shape[1], dtype_size(t.dtype));
    t.layout = it->second;
    ++counts[layout_name(t.layout)];
  }
  PassReport report{"layout", !counts.empty(), ""};
  for (const auto& [name, count] : counts) {
    report.detail += (report.detail.empty() ? "" : ", ") + std::to_string(count) + " weight(s) to " + name;
  }
  if (counts.empty()) report.detail = "every weight stays row-major";
  return report;
}

}  // namespace kiln
