#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/floats.h"
#include "model/config.h"

namespace kiln {

// A weight during compilation: fp32 whatever the checkpoint dtype, so passes can do exact math on it;
// precision is applied once, after the passes.
struct Weight {
  std::vector<int64_t> shape;
  Floats data;
};

// One operation of the decoder dataflow. Activations are named by strings; a fused linear's parts
// are read as "<output>#<part>".
struct Node {
  std::string op;  // embedding, rms_norm, head_rms_norm, linear, attention, add, silu_mul
  std::string name;
  std::vector<std::string> inputs;
  std::string output;
  std::vector<std::string> weights;  // linear: weight[, bias]; norms and embedding: the one table
  std::vector<int64_t> splits;       // fused linear: widths of the parts, in output order
};

// The compile-time model: the dataflow the passes rewrite plus the weights it reads.
struct Graph {
  ModelConfig config;
  std::map<std::string, Weight> weights;
  std::vector<Node> nodes;

  Node* find_node(const std::string& name);
  // Nodes that read `activation` whole or any part of it.
  std::vector<Node*> consumers(const std::string& activation);
  // Number of nodes that list `weight` among their weights.
  int weight_readers(const std::string& weight) const;
};

// What one pass did, recorded in the engine header so a reader of `inspect` sees the optimisations.
struct PassReport {
  std::string name;
  bool applied = false;
  std::string detail;
};

}  // namespace kiln
