#include "compiler/autotune.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <random>
#include <set>
#include <tuple>

#include "backend/cpu/target.h"
#include "compiler/tactics.h"
#include "core/error.h"

namespace kiln {

namespace {

struct ShapeGroup {
  int64_t n = 0;
  int64_t k = 0;
  DType dtype = DType::F32;
  const TensorBlob* weight = nullptr;  // a representative: timing uses real weight values
  const TensorBlob* scales = nullptr;
  bool row_only = false;
  std::vector<std::string> members;
};

// Best-of-several wall time of one call: the minimum filters out preemption by other processes.
double time_call_us(const GemmTactic& t, const GemmProblem& p, ThreadPool& pool) {
  using clock = std::chrono::steady_clock;
  t.run(p, pool, t.threads);  // warm caches and the pool
  double best = std::numeric_limits<double>::infinity();
  const auto start = clock::now();
  for (int rep = 0; rep < 200; ++rep) {
    const auto t0 = clock::now();
    t.run(p, pool, t.threads);
    best = std::min(best, std::chrono::duration<double, std::micro>(clock::now() - t0).count());
    if (rep >= 2 && clock::now() - start > std::chrono::milliseconds(4)) break;
  }
  return best;
}

}  // namespace

AutotuneResult autotune_gemms(const std::vector<TensorBlob>& tensors, const std::vector<std::string>& gemm_weights,
                              const std::set<std::string>& row_only, const std::vector<int64_t>& buckets,
                              ThreadPool& pool, const std::function<void(size_t, size_t)>& on_step) {
  std::map<std::string, const TensorBlob*> by_name;
  for (const auto& t : tensors) by_name[t.name] = &t;
  std::map<std::tuple<int64_t, int64_t, DType>, ShapeGroup> groups;
  for (const auto& name : gemm_weights) {
    const auto it = by_name.find(name);
    if (it == by_name.end()) throw Error("autotune: GEMM weight " + name + " is missing");
    const TensorBlob& w = *it->second;
    ShapeGroup& g = groups[{w.shape[0], w.shape[1], w.dtype}];
    if (!g.weight) {
      g = ShapeGroup{w.shape[0], w.shape[1], w.dtype, &w, nullptr, false, {}};
      const auto s = by_name.find(name + ".scales");
      if (s != by_name.end()) g.scales = s->second;
    }
    g.row_only = g.row_only || row_only.count(name);
    g.members.push_back(name);
  }

  const auto& registry = TacticRegistry::instance();
  size_t total = 0;
  for (const auto& [key, g] : groups) total += buckets.size() * registry.gemm_candidates(g.n, g.k).size();
  size_t done = 0;

  AutotuneResult result;
  Json entries = Json::array();
  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  for (const auto& [key, g] : groups) {
    std::vector<const GemmTactic*> candidates;
    for (const GemmTactic* t : registry.gemm_candidates(g.n, g.k)) {
      if (!g.row_only || t->layout == WeightLayout::Row) candidates.push_back(t);
    }
    std::map<WeightLayout, std::vector<uint8_t>> packed;
    for (const GemmTactic* t : candidates) {
      if (!packed.count(t->layout)) packed[t->layout] = pack_weight(t->layout, g.weight->bytes, g.n, g.k, dtype_size(g.dtype));
    }
    // times[bucket][tactic]
    std::vector<std::map<const GemmTactic*, double>> times(buckets.size());
    for (size_t b = 0; b < buckets.size(); ++b) {
      const int64_t m = buckets[b];
      std::vector<float> x(static_cast<size_t>(m * g.k));
      for (float& v : x) v = uniform(rng);
      std::vector<float> y(static_cast<size_t>(m * g.n));
      for (const GemmTactic* t : candidates) {
        GemmProblem p;
        p.x = x.data();
        p.m = m;
        p.k = g.k;
        p.w = packed[t->layout].data();
        p.w_dtype = g.dtype;
        p.layout = t->layout;
        p.n = g.n;
        p.row_scale = g.scales ? reinterpret_cast<const float*>(g.scales->bytes.data()) : nullptr;
        p.y = y.data();
        times[b][t] = time_call_us(*t, p, pool);
        if (on_step) on_step(++done, total);
      }
    }
    const auto fastest = [&](size_t b, const WeightLayout* layout) {
      const GemmTactic* best = nullptr;
      for (const auto& [t, us] : times[b]) {
        if (layout && t->layout != *layout) continue;
        if (!best || us < times[b][best]) best = t;
      }
      return best;
    };
    // A weight has one layout for every batch size, and a serving engine runs them all (decode of
    // one sequence up to full in-flight batches). The layout whose best tactics cost least per token,
    // summed over the buckets, wins: choosing it at batch 1 alone picked layouts whose kernels reuse
    // a weight load across at most two rows, which capped batched throughput.
    std::set<WeightLayout> layouts;
    for (const GemmTactic* t : candidates) layouts.insert(t->layout);
    WeightLayout layout = fastest(0, nullptr)->layout;
    double best_cost = -1;
    for (const WeightLayout l : layouts) {
      double cost = 0;
      for (size_t b = 0; b < buckets.size(); ++b) cost += times[b][fastest(b, &l)] / static_cast<double>(buckets[b]);
      if (best_cost < 0 || cost < best_cost) {
        best_cost = cost;
        layout = l;
      }
    }
    for (size_t b = 0; b < buckets.size(); ++b) {
      const GemmTactic* best = fastest(b, &layout);
      Json all = Json::object();
      for (const GemmTactic* t : candidates) all[t->name] = std::round(times[b][t] * 100) / 100;
      entries.push_back(Json{{"op", "gemm"},
                             {"n", g.n},
                             {"k", g.k},
                             {"dtype", dtype_name(g.dtype)},
                             {"layout", layout_name(layout)},
                             {"bucket", buckets[b]},
                             {"tactic", best->name},
                             {"us", std::round(times[b][best] * 100) / 100},
                             {"weights", g.members.size()},
                             {"candidates", all}});
    }
    for (const auto& name : g.members) result.layouts[name] = layout;
  }
  result.table = Json{{"enabled", true},
                      {"device", cpu_target_fingerprint()},
                      {"pool_threads", pool.size()},
                      {"buckets", buckets},
                      {"selection", "layout with the least per-token time summed over the buckets (each bucket's fastest "
                                    "tactic of that layout); per bucket the fastest tactic for that layout; time = best of "
                                    "repeated calls"},
                      {"entries", entries}};
  return result;
}

AutotuneResult untuned_gemms(const std::vector<int64_t>& buckets) {
  AutotuneResult r;
  r.table = Json{{"enabled", false},
                 {"device", cpu_target_fingerprint()},
                 {"buckets", buckets},
                 {"default_tactic", TacticRegistry::instance().default_gemm().name},
                 {"entries", Json::array()}};
  return r;
}

}  // namespace kiln
