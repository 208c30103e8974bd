#include <algorithm>

#include "compiler/passes/passes.h"
#include "core/error.h"

namespace kiln {

namespace {

// Fuses the linears `layers.N.<part>` that read one activation into `layers.N.<fused>`, whose output
// rows are the parts' rows in order; readers of part j then read "<fused output>#j".
PassReport fuse_sibling_linears(Graph& g, const std::string& pass, const std::vector<std::string>& parts,
                                const std::string& fused) {
  PassReport report{pass, false, ""};
  int layers_fused = 0;
  for (int64_t i = 0; i < g.config.num_layers; ++i) {
    const std::string L = "layers." + std::to_string(i) + ".";
    std::vector<Node*> members;
    for (const auto& p : parts) members.push_back(g.find_node(L + p));
    const bool fusable = std::all_of(members.begin(), members.end(), [&](const Node* n) {
      return n && n->op == "linear" && n->splits.empty() && n->inputs == members[0]->inputs &&
             n->weights.size() == members[0]->weights.size() &&
             g.weights.at(n->weights[0]).shape[1] == g.weights.at(members[0]->weights[0]).shape[1];
    });
    if (!fusable) continue;

    const bool has_bias = members[0]->weights.size() == 2;
    Weight weight{{0, g.weights.at(members[0]->weights[0]).shape[1]}, {}};
    Weight bias{{0}, {}};
    Node node{"linear", L + fused, members[0]->inputs, L + fused + ".out", {L + fused + ".weight"}, {}};
    for (Node* m : members) {
      const Weight& w = g.weights.at(m->weights[0]);
      weight.shape[0] += w.shape[0];
      weight.data.insert(weight.data.end(), w.data.begin(), w.data.end());
      node.splits.push_back(w.shape[0]);
      if (has_bias) {
        const Weight& b = g.weights.at(m->weights[1]);
        bias.shape[0] += b.shape[0];
        bias.data.insert(bias.data.end(), b.data.begin(), b.data.end());
      }
    }
    if (has_bias) node.weights.push_back(L + fused + ".bias");

    for (size_t j = 0; j < members.size(); ++j) {
      const std::string old_output = members[j]->output;
      for (Node* reader : g.consumers(old_output)) {
        for (auto& in : reader->inputs) {
          if (in == old_output) in = node.output + "#" + std::to_string(j);
        }
      }
    }
    std::vector<std::string> old_names;
    for (Node* m : members) {
      old_names.push_back(m->name);
      for (const auto& w : m->weights) g.weights.erase(w);
    }
    const auto first = std::find_if(g.nodes.begin(), g.nodes.end(), [&](const Node& n) { return n.name == old_names[0]; });
    *first = std::move(node);
    g.nodes.erase(std::remove_if(g.nodes.begin(), g.nodes.end(),
                                 [&](const Node& n) {
                                   return std::find(old_names.begin() + 1, old_names.end(), n.name) != old_names.end();
                                 }),
                  g.nodes.end());
    g.weights[L + fused + ".weight"] = std::move(weight);
    if (has_bias) g.weights[L + fused + ".bias"] = std::move(bias);
    ++layers_fused;
  }
  report.applied = layers_fused > 0;
  std::string joined;
  for (const auto& p : parts) joined += (joined.empty() ? "" : "+") + p;
  report.detail = "fused " + joined + " into " + fused + " in " + std::to_string(layers_fused) + " of " +
                  std::to_string(g.config.num_layers) + " layers";
  return report;
}

}  // namespace

PassReport fuse_qkv(Graph& graph) { return fuse_sibling_linears(graph, "fuse_qkv", {"q", "k", "v"}, "qkv"); }

PassReport fuse_gate_up(Graph& graph) {
  return fuse_sibling_linears(graph, "fuse_gate_up", {"gate", "up"}, "gate_up");
}

}  // namespace kiln
