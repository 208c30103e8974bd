// CudaModel::decode_kernel_costs: a decode step's time, family by family of its graph's kernels.
// Nsight Systems does not run on the GPU machine and Nsight Compute serializes kernels (every one
// then pays its full ramp and drain, which PDL hides in the graph), so neither says what a kernel
// costs the step as it runs; disabling its nodes in the instantiated graph does, and in a timeline
// build (timeline.h) so do the marks every launch leaves at its PDL wait.

#include <cxxabi.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <queue>
#include <string>
#include <utility>
#include <vector>

#include "backend/cuda/check.h"
#include "backend/cuda/graph.h"
#include "backend/cuda/model.h"
#include "backend/cuda/timeline.h"
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

// The graph's nodes in launch order: dependency order, found from its edges (a decode graph is one
// chain, programmatic edges included); ties keep cudaGraphGetNodes' order.
std::vector<cudaGraphNode_t> nodes_in_launch_order(cudaGraph_t graph) {
  size_t count = 0;
  KILN_CUDA_CHECK(cudaGraphGetNodes(graph, nullptr, &count));
  std::vector<cudaGraphNode_t> nodes(count);
  KILN_CUDA_CHECK(cudaGraphGetNodes(graph, nodes.data(), &count));
  size_t edges = 0;
  KILN_CUDA_CHECK(cudaGraphGetEdges(graph, nullptr, nullptr, nullptr, &edges));
  std::vector<cudaGraphNode_t> from(edges), to(edges);
  std::vector<cudaGraphEdgeData> data(edges);  // programmatic edges are not default ones: a null here is refused
  KILN_CUDA_CHECK(cudaGraphGetEdges(graph, from.data(), to.data(), data.data(), &edges));
  std::map<cudaGraphNode_t, size_t> index;
  for (size_t i = 0; i < count; ++i) index[nodes[i]] = i;
  std::vector<size_t> waiting(count, 0);
  std::vector<std::vector<size_t>> after(count);
  for (size_t e = 0; e < edges; ++e) {
    after[index.at(from[e])].push_back(index.at(to[e]));
    ++waiting[index.at(to[e])];
  }
  std::priority_queue<size_t, std::vector<size_t>, std::greater<>> ready;
  for (size_t i = 0; i < count; ++i) {
    if (waiting[i] == 0) ready.push(i);
  }
  std::vector<cudaGraphNode_t> order;
  while (!ready.empty()) {
    const size_t i = ready.top();
    ready.pop();
    order.push_back(nodes[i]);
    for (size_t j : after[i]) {
      if (--waiting[j] == 0) ready.push(j);
    }
  }
  return order;
}

// The graph's kernel nodes by (kernel name, blocks), in the order each family is first launched; with
// `order`, every kernel node's family index in the graph's (launch) order.
std::vector<std::pair<CudaModel::KernelCost, std::vector<cudaGraphNode_t>>> kernel_families(
    cudaGraph_t graph, std::vector<size_t>* order) {
  std::vector<std::pair<CudaModel::KernelCost, std::vector<cudaGraphNode_t>>> families;
  std::map<std::pair<std::string, unsigned>, size_t> index;
  for (cudaGraphNode_t node : nodes_in_launch_order(graph)) {
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
    if (order) order->push_back(at->second);
  }
  return families;
}

// The launch timeline of kTimelineReplays replays laid onto the families (KernelCost::critical_us
// and the rest), averaged over the replays. The Kiln launches are the kernel nodes that are not
// library kernels, in the same order; where their counts differ (a kernel whose thread 0 never
// waits) or the recording fails, nothing is laid on and the note says why. The note also gives
// what the attribution rests on: the grid ids' span against the launches (%gridid taken to count
// launches), the timer's finest step seen, and the critical times' sum against the replays' span.
constexpr int kTimelineReplays = 8;

std::string lay_on_timeline(cudaGraphExec_t exec, cudaStream_t stream,
                            std::vector<std::pair<CudaModel::KernelCost, std::vector<cudaGraphNode_t>>>& families,
                            const std::vector<size_t>& order) {
  std::vector<TimelineLaunch> launches;
  try {
    launches = record_timeline(stream, [&] {
      for (int r = 0; r < kTimelineReplays; ++r) KILN_CUDA_CHECK(cudaGraphLaunch(exec, stream));
    });
  } catch (const Error& e) {
    return std::string("timeline: ") + e.what() + "; not laid on";
  }
  const auto library = [&](size_t family) { return families[family].first.kernel == "library kernel"; };
  const auto library_nodes = static_cast<size_t>(std::count_if(order.begin(), order.end(), library));
  const size_t per_replay = order.size() - library_nodes;
  if (per_replay == 0 || launches.size() != kTimelineReplays * per_replay) {
    return "timeline: " + std::to_string(launches.size()) + " marked launches in " +
           std::to_string(kTimelineReplays) + " replays of " + std::to_string(per_replay) +
           " Kiln kernel nodes; not laid on";
  }
  struct Sums {
    double critical = 0, waited = 0, spread = 0;
    int64_t count = 0, critical_count = 0;
  };
  std::vector<Sums> sums(families.size());
  double span = 0, critical = 0;
  for (int r = 0; r < kTimelineReplays; ++r) {
    const TimelineLaunch* const replay = launches.data() + r * per_replay;
    span += replay[per_replay - 1].release_first_us - replay[0].release_first_us;
    size_t next = 0;  // the replay's next Kiln launch
    for (size_t i = 0; i < order.size(); ++i) {
      if (library(order[i])) continue;
      const TimelineLaunch& l = replay[next++];
      Sums& s = sums[order[i]];
      s.waited += l.release_first_us - l.arrive_first_us;
      s.spread += l.release_last_us - l.release_first_us;
      ++s.count;
      if (i + 1 < order.size() && !library(order[i + 1])) {
        const double t = replay[next].release_first_us - l.release_first_us;
        s.critical += t;
        critical += t;
        ++s.critical_count;
      }
    }
  }
  for (size_t f = 0; f < families.size(); ++f) {
    if (sums[f].count == 0) continue;
    CudaModel::KernelCost& cost = families[f].first;
    if (sums[f].critical_count > 0) cost.critical_us = sums[f].critical / kTimelineReplays;
    cost.waited_us = sums[f].waited / static_cast<double>(sums[f].count);
    cost.release_spread_us = sums[f].spread / static_cast<double>(sums[f].count);
  }
  std::vector<double> marks;
  for (const TimelineLaunch& l : launches) {
    marks.insert(marks.end(), {l.arrive_first_us, l.release_first_us, l.release_last_us});
  }
  std::sort(marks.begin(), marks.end());
  double finest = INFINITY;
  for (size_t i = 1; i < marks.size(); ++i) {
    if (marks[i] > marks[i - 1]) finest = std::min(finest, marks[i] - marks[i - 1]);
  }
  const auto fixed = [](double v, int digits) {
    char text[32];
    std::snprintf(text, sizeof text, "%.*f", digits, v);
    return std::string(text);
  };
  return "timeline: " + std::to_string(per_replay) + " launches a replay laid on, " + std::to_string(kTimelineReplays) +
         " replays; grid ids span " + std::to_string(launches.back().grid - launches.front().grid + 1) + " for " +
         std::to_string(launches.size()) + " launches; finest timer step " + fixed(finest * 1e3, 0) +
         " ns; critical times add to " + fixed(critical / kTimelineReplays, 1) + " of " +
         fixed(span / kTimelineReplays, 1) + " us a replay (first to last release)";
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
                                                                  int replays, double* step_ms,
                                                                  std::string* timeline_note) {
  const StepShape shape = graphed_shape(batch, cache, replays, "decode_kernel_costs");
  reserve(shape);
  pack(batch, shape, cache.page_size());
  const OwnedGraph step(capture(stream_, [&] { enqueue(shape, cache); }));
  std::vector<size_t> order;
  auto families = kernel_families(step.graph(), &order);
  // One untimed replay first: the graph's first launch uploads it.
  replay_ms(step.exec(), stream_, 1);
  if (step_ms) *step_ms = replay_ms(step.exec(), stream_, replays);
  if (timeline_compiled()) {
    const std::string note = lay_on_timeline(step.exec(), stream_, families, order);
    if (timeline_note) *timeline_note = note;
  }
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
