#include "compiler/graph.h"

namespace kiln {

Node* Graph::find_node(const std::string& name) {
  for (auto& n : nodes) {
    if (n.name == name) return &n;
  }
  return nullptr;
}

std::vector<Node*> Graph::consumers(const std::string& activation) {
  std::vector<Node*> out;
  const std::string part_prefix = activation + "#";
  for (auto& n : nodes) {
    for (const auto& in : n.inputs) {
      if (in == activation || in.rfind(part_prefix, 0) == 0) {
        out.push_back(&n);
        break;
      }
    }
  }
  return out;
}

int Graph::weight_readers(const std::string& weight) const {
  int count = 0;
  for (const auto& n : nodes) {
    for (const auto& w : n.weights) {
      if (w == weight) ++count;
    }
  }
  return count;
}

}  // namespace kiln
