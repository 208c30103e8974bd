// CudaModel::decode_kernel_costs: a decode step's time, family by family of its graph's kernels.
// Nsight Systems does not run on the GPU machine and Nsight Compute serializes kernels (every one
// then pays its full ramp and drain, which PDL hides in the graph), so neither says what a kernel
// costs the step as it runs; disabling its nodes in the instantiated graph does.

#include <cxxabi.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <utility>

#include "backend/cuda/check.h"
#include "backend/cuda/graph.h"
#include "backend/cuda/model.h"
#include "core/error.h"

namespace kiln::cuda {

namespace {

// Owns a captured graph and its instantiation.
class OwnedGraph {
 public:
  explicit OwnedGraph(cudaGraph_t graph) : graph_(graph) {
    const cudaError_t status = cudaGraphInstantiate(&exec_, graph_, 0);
    if (status != cudaSuccess) {
      cudaGraphDestroy(graph_);
      KILN_CUDA_CHECK(status);
    }
  }
  ~OwnedGraph() {
    cudaGraphExecDestroy(exec_);
    cudaGraphDestroy(graph_);
  }
  OwnedGraph(const OwnedGraph&) = delete;
  OwnedGraph& operator=(const OwnedGraph&) = delete;
  cudaGraph_t graph() const { return graph_; }
  cudaGraphExec_t exec() const { return exec_; }

 private:
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};

// A kernel's symbol as a reader names it: demangled, without its return type, namespaces and
// parameter list ("gemv_mma_kernel<1, 8, false, true, true, 8, true>").
std::string readable_kernel_name(const char* symbol) {
  int status = 0;
  char* demangled = abi::__cxa_demangle(symbol, nullptr, nullptr, &status);
  std::string s = status == 0 && demangled ? demangled : symbol;
  std::free(demangled);
  for (const std::string prefix : {"(anonymous namespace)::", "kiln::cuda::", "gemv_detail::"}) {
    for (size_t at = s.find(prefix); at != std::string::npos; at = s.find(prefix)) s.erase(at, prefix.size());
  }
  if (s.rfind("void ", 0) == 0) s.erase(0, 5);
  int depth = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '<') ++depth;
    if (s[i] == '>') --depth;
    if (s[i] == '(' && depth == 0) return s.substr(0, i);
  }
  return s;
}

// A kernel node's name and block count. A kernel another library launched through the driver API
// (cuBLASLt's) has no runtime entry point to name, and the runtime may not even give its
// parameters: it is then "library kernel", with its grid where known (0 where not). The legacy
// cudaGraphKernelNodeGetParams, not cudaGraphNodeGetParams: the GPU machine's CUDA 13.0 runtime
// lacks the latter, and the former returns a foreign kernel's handle that cudaFuncGetName refuses.
std::pair<std::string, unsigned> kernel_of(cudaGraphNode_t node) {
  cudaKernelNodeParams params{};
  if (cudaGraphKernelNodeGetParams(node, &params) != cudaSuccess) {
    cudaGetLastError();
    return {"library kernel", 0};
  }
  const unsigned blocks = params.gridDim.x * params.gridDim.y * params.gridDim.z;
  const char* name = nullptr;
  if (!params.func || cudaFuncGetName(&name, params.func) != cudaSuccess || !name) {
    cudaGetLastError();
    return {"library kernel", blocks};
  }
  return {readable_kernel_name(name), blocks};
}

// The graph's kernel nodes by (kernel name, blocks), in the order each family first appears.
std::vector<std::pair<CudaModel::KernelCost, std::vector<cudaGraphNode_t>>> kernel_families(cudaGraph_t graph) {
  size_t count = 0;
  KILN_CUDA_CHECK(cudaGraphGetNodes(graph, nullptr, &count));
  std::vector<cudaGraphNode_t> nodes(count);
  KILN_CUDA_CHECK(cudaGraphGetNodes(graph, nodes.data(), &count));
  std::vector<std::pair<CudaModel::KernelCost, std::vector<cudaGraphNode_t>>> families;
  std::map<std::pair<std::string, unsigned>, size_t> index;
  for (cudaGraphNode_t node : nodes) {
    cudaGraphNodeType type{};
    KILN_CUDA_CHECK(cudaGraphNodeGetType(node, &type));
    if (type != cudaGraphNodeTypeKernel) continue;
    const auto [name, blocks] = kernel_of(node);
    const auto key = std::make_pair(name, blocks);
    auto [at, added] = index.emplace(key, families.size());
    if (added) {
      CudaModel::KernelCost cost;
      cost.kernel = key.first;
      cost.blocks = blocks;
      families.emplace_back(cost, std::vector<cudaGraphNode_t>{});
    }
    families[at->second].second.push_back(node);
  }
  return families;
}

void set_enabled(cudaGraphExec_t exec, const std::vector<cudaGraphNode_t>& nodes, bool enabled) {
  for (cudaGraphNode_t node : nodes) KILN_CUDA_CHECK(cudaGraphNodeSetEnabled(exec, node, enabled ? 1 : 0));
}

// Whether the family's nodes can be disabled: the first one's refusal (a cluster launch) leaves
// every node as it was, and a refusal is no error of the step.
bool try_disable(cudaGraphExec_t exec, const std::vector<cudaGraphNode_t>& nodes) {
  if (cudaGraphNodeSetEnabled(exec, nodes.front(), 0) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  set_enabled(exec, {nodes.begin() + 1, nodes.end()}, false);
  return true;
}

}  // namespace

std::vector<CudaModel::KernelCost> CudaModel::decode_kernel_costs(const ForwardBatch& batch, CudaKvCache& cache,
                                                                  int replays, double* step_ms) {
  const StepShape shape = graphed_shape(batch, cache, replays, "decode_kernel_costs");
  reserve(shape);
  pack(batch, shape, cache.page_size());
  const OwnedGraph step(capture(stream_, [&] { enqueue(shape, cache); }));
  auto families = kernel_families(step.graph());
  // One untimed replay first: the graph's first launch uploads it.
  replay_ms(step.exec(), stream_, 1);
  if (step_ms) *step_ms = replay_ms(step.exec(), stream_, replays);
  std::vector<KernelCost> costs;
  for (auto& [cost, nodes] : families) {
    cost.launches = static_cast<int64_t>(nodes.size());
    if (try_disable(step.exec(), nodes)) {
      cost.step_ms_without = replay_ms(step.exec(), stream_, replays);
      set_enabled(step.exec(), nodes, true);
    }
    costs.push_back(cost);
  }
  // A disabled node is an empty node on the PDL edges around it, so the kernels next to it may
  // overlap in ways the step never does: the decode attention's counter merge could be left
  // non-zero, which every later step relies on finding zero.
  if (split_counters_.bytes() > 0) {
    KILN_CUDA_CHECK(cudaMemsetAsync(split_counters_.get(), 0, split_counters_.bytes(), stream_));
  }
  KILN_CUDA_CHECK(cudaStreamSynchronize(stream_));
  // Costliest first (the shortest step without them); the families that could not be disabled last.
  std::stable_sort(costs.begin(), costs.end(), [](const KernelCost& a, const KernelCost& b) {
    return a.step_ms_without.value_or(INFINITY) < b.step_ms_without.value_or(INFINITY);
  });
  return costs;
}

}  // namespace kiln::cuda
