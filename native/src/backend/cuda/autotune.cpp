#include "backend/cuda/autotune.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <string>
#include <tuple>

#include "backend/cuda/check.h"
#include "backend/cuda/device.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/gemv.h"
#include "compiler/precision.h"
#include "core/error.h"

namespace kiln::cuda {

namespace {

constexpr int kCandidates = 32;
constexpr int kRepeats = 7;

struct ShapeGroup {
  int64_t n = 0;
  int64_t k = 0;
  bool fp8 = false;
  const TensorBlob* weight = nullptr;
  bool logits = false;
  // Every member is an MLP gate_up weight, whose output the model passes through SiLU·mul (a shape
  // shared with another projection races as a plain GEMM: one choice serves both).
  bool gate_up = false;
  std::vector<std::string> members;
};

bool is_gate_up(const std::string& weight_name) {
  const std::string suffix = "gate_up.weight";
  return weight_name.size() >= suffix.size() &&
         weight_name.compare(weight_name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The weight as the GEMM reads it: fp8 bytes as stored, anything else as bf16.
std::vector<uint8_t> device_weight(const TensorBlob& w) {
  if (w.dtype == DType::F8E4M3) return w.bytes;
  std::vector<uint8_t> out(w.bytes.size() / dtype_size(w.dtype) * 2);
  const size_t count = out.size() / 2;
  if (w.dtype == DType::BF16) {
    std::copy_n(w.bytes.data(), out.size(), out.data());
    return out;
  }
  if (w.dtype != DType::F32 && w.dtype != DType::F16) {
    throw Error("CUDA autotune: weight " + w.name + " is " + dtype_name(w.dtype) +
                "; the CUDA target runs bf16 and fp8 e4m3 GEMMs");
  }
  std::vector<float> f(count);
  decode_to_f32(w.dtype, w.bytes.data(), f.data(), count);
  encode_from_f32(DType::BF16, f.data(), out.data(), count);
  return out;
}

double round2(double v) { return std::round(v * 100) / 100; }

// The median of kRepeats event-timed runs of `launch`, each after flushing the L2 and then running
// `before` (untimed: what leaves the launch's input where a step would have it).
template <typename Launch, typename Before>
double median_us(const DeviceBuffer& flush, const EventPair& events, cudaStream_t stream, Launch&& launch,
                 Before&& before) {
  std::vector<double> times;
  for (int rep = 0; rep < kRepeats; ++rep) {
    KILN_CUDA_CHECK(cudaMemsetAsync(flush.get(), rep, flush.bytes(), stream));
    before();
    KILN_CUDA_CHECK(cudaEventRecord(events.start(), stream));
    launch();
    KILN_CUDA_CHECK(cudaEventRecord(events.stop(), stream));
    times.push_back(events.elapsed_us());
  }
  std::nth_element(times.begin(), times.begin() + kRepeats / 2, times.end());
  return times[kRepeats / 2];
}

template <typename Launch>
double median_us(const DeviceBuffer& flush, const EventPair& events, cudaStream_t stream, Launch&& launch) {
  return median_us(flush, events, stream, launch, [] {});
}

}  // namespace

std::vector<int64_t> gemm_buckets(int64_t max_batch, int64_t max_seq_len) {
  std::vector<int64_t> b{1, 8, 64, 256, 2048};
  if (max_batch > 64) b.push_back(max_batch);
  b.erase(std::remove_if(b.begin(), b.end(), [&](int64_t m) { return m > std::max(max_batch, max_seq_len); }), b.end());
  std::sort(b.begin(), b.end());
  b.erase(std::unique(b.begin(), b.end()), b.end());
  return b;
}

AutotuneResult autotune_gemms(const std::vector<TensorBlob>& tensors, const std::vector<std::string>& gemm_weights,
                              const std::string& logits_weight, const std::vector<int64_t>& buckets, int64_t max_batch,
                              const std::function<void(size_t, size_t)>& on_step) {
  std::map<std::string, const TensorBlob*> by_name;
  for (const auto& t : tensors) by_name[t.name] = &t;
  std::map<std::tuple<int64_t, int64_t, bool>, ShapeGroup> groups;
  for (const auto& name : gemm_weights) {
    const auto it = by_name.find(name);
    if (it == by_name.end()) throw Error("CUDA autotune: GEMM weight " + name + " is missing");
    const TensorBlob& w = *it->second;
    const bool fp8 = w.dtype == DType::F8E4M3;
    ShapeGroup& g = groups[{w.shape[0], w.shape[1], fp8}];
    if (!g.weight) g = ShapeGroup{w.shape[0], w.shape[1], fp8, &w, false, true, {}};
    g.logits = g.logits || name == logits_weight;
    g.gate_up = g.gate_up && is_gate_up(name);
    g.members.push_back(name);
  }
  const auto buckets_of = [&](const ShapeGroup& g) {
    std::vector<int64_t> out;
    for (int64_t b : buckets) {
      if (!g.logits || b <= std::max<int64_t>(max_batch, 1) || out.empty()) out.push_back(b);
    }
    return out;
  };
  size_t total = 0;
  for (const auto& [key, g] : groups) total += buckets_of(g).size();
  size_t done = 0;

  LtContext context;
  cudaStream_t stream = nullptr;
  KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  struct StreamGuard {
    cudaStream_t s;
    ~StreamGuard() { cudaStreamDestroy(s); }
  } stream_guard{stream};
  cudaDeviceProp prop{};
  int device = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&device));
  KILN_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  // Writing twice the L2 between runs evicts the weight, so each timed run reads it from HBM.
  DeviceBuffer flush(2 * static_cast<size_t>(prop.l2CacheSize), "the autotuner's L2 flush buffer");
  EventPair events;

  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  Json entries = Json::array();
  for (const auto& [key, g] : groups) {
    const std::vector<int64_t> shape_buckets = buckets_of(g);
    const int64_t max_m = shape_buckets.back();
    const std::vector<uint8_t> host_w = device_weight(*g.weight);
    DeviceBuffer w(host_w.size(), "autotune weight " + g.weight->name);
    KILN_CUDA_CHECK(cudaMemcpy(w.get(), host_w.data(), w.bytes(), cudaMemcpyHostToDevice));
    // Random inputs spanning the fp8 range for fp8 GEMMs (zeros could run faster than real data).
    std::vector<float> host_x(static_cast<size_t>(max_m * g.k));
    for (float& v : host_x) v = uniform(rng) * (g.fp8 ? 400.0f : 1.0f);
    std::vector<uint8_t> host_xq(host_x.size() * (g.fp8 ? 1 : 2));
    if (g.fp8) {
      quantize_fp8(host_x.data(), host_x.size(), 1.0f, host_xq.data());
    } else {
      encode_from_f32(DType::BF16, host_x.data(), host_xq.data(), host_x.size());
    }
    DeviceBuffer x(host_xq.size(), "autotune input");
    KILN_CUDA_CHECK(cudaMemcpy(x.get(), host_xq.data(), x.bytes(), cudaMemcpyHostToDevice));
    DeviceBuffer y(static_cast<size_t>(max_m * g.n) * 4, "autotune output");
    LtGemm gemm(context, g.n, g.k, g.fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF);

    for (int64_t m : shape_buckets) {
      const auto proposals = gemm.heuristic(m, kCandidates);
      Json candidates = Json::array();
      int best = -1;
      double best_us = 0;
      for (size_t i = 0; i < proposals.size(); ++i) {
        const cublasLtMatmulAlgo_t& algo = proposals[i].algo;
        // A proposal may still refuse at launch; such a candidate is recorded and skipped.
        if (gemm.try_run(algo, w.get(), x.get(), m, y.get<float>(), 0.0f, stream) != CUBLAS_STATUS_SUCCESS) {
          candidates.push_back(Json{{"config", algo_config(algo)}, {"us", nullptr}});
          continue;
        }
        const double median = median_us(flush, events, stream,
                                        [&] { gemm.run(algo, w.get(), x.get(), m, y.get<float>(), 0.0f, stream); });
        candidates.push_back(Json{{"config", algo_config(algo)}, {"us", round2(median)}});
        if (best < 0 || median < best_us) {
          best = static_cast<int>(i);
          best_us = median;
        }
      }
      if (best < 0) {
        throw Error("CUDA autotune: no cuBLASLt algorithm ran GEMM m=" + std::to_string(m) + " n=" + std::to_string(g.n) +
                    " k=" + std::to_string(g.k));
      }
      const cublasLtMatmulAlgo_t& winner = proposals[static_cast<size_t>(best)].algo;
      const double best_lt_us = best_us;
      // The bucket's rows are the most a batch it serves has (m = 8 serves 2..8).
      const bool race_gemv = gemv_supports(m, g.k, g.fp8);
      // A gate_up step runs kiln-gemv with its SiLU·mul output, or cuBLASLt and then silu_mul_to_* on
      // its output (timed with that output just written, in L2 as in a step): the race compares those.
      const bool silu = g.gate_up && race_gemv;
      double silu_us = 0;
      DeviceBuffer act;
      if (silu) {
        act = DeviceBuffer(static_cast<size_t>(m * (g.n / 2)) * (g.fp8 ? 1 : 2), "autotune SiLU·mul output");
        silu_us = median_us(
            flush, events, stream,
            [&] {
              if (g.fp8) silu_mul_to_fp8(y.get<float>(), m, g.n / 2, 1.0f, act.get<fp8>(), stream);
              else silu_mul_to_bf16(y.get<float>(), m, g.n / 2, act.get<bf16>(), stream);
            },
            [&] { gemm.run(winner, w.get(), x.get(), m, y.get<float>(), 0.0f, stream); });
        best_us += silu_us;
      }
      GemvOut kiln_out;  // what the GEMV writes: the SiLU·mul for gate_up, else y
      if (silu) kiln_out.act = act.get();
      else kiln_out.y = y.get<float>();
      std::string tactic = "cublaslt";
      int gemv_split = 1;
      bool gemv_stage_input = true;
      Json gemv_us = Json::object();
      if (race_gemv) {
        for (int split : gemv_splits(g.fp8)) {
          // E4M3 also without the input staging (gemv.h); bf16 has none.
          for (bool stage : {true, false}) {
            if (!stage && !g.fp8) continue;
            const double us = median_us(flush, events, stream, [&] {
              GemvIn in;
              in.x = x.get();
              gemv(w.get(), g.fp8, m, g.n, g.k, 1.0f, in, kiln_out, split, stream, stage, true);
            });
            gemv_us["split" + std::to_string(split) + (stage ? "" : "_unstaged")] = round2(us);
            if (us < best_us) {
              tactic = "kiln-gemv";
              gemv_split = split;
              gemv_stage_input = stage;
              best_us = us;
            }
          }
        }
      }
      Json entry{{"op", "gemm"},
                 {"backend", "cuda"},
                 {"n", g.n},
                 {"k", g.k},
                 {"dtype", g.fp8 ? "f8e4m3" : "bf16"},
                 {"layout", "row"},
                 {"bucket", m},
                 {"tactic", tactic},
                 {"gemv_split", gemv_split},
                 {"gemv_stage_input", gemv_stage_input},
                 {"algo", algo_to_hex(winner)},
                 {"config", algo_config(winner)},
                 {"us", round2(best_us)},
                 {"cublaslt_us", round2(best_lt_us)},
                 {"kiln_gemv_us", gemv_us},
                 {"heuristic_first_us", candidates[0]["us"]},
                 {"weights", g.members.size()},
                 {"candidates", candidates}};
      if (silu) {
        entry["silu_us"] = round2(silu_us);
        entry["note"] = "gate_up: kiln_gemv_us include the SiLU·mul the GEMV writes; cuBLASLt raced as cublaslt_us "
                        "(the GEMM alone, as its candidates) + silu_us (the silu_mul kernel after it); us is the "
                        "winner's time with the SiLU·mul";
      }
      entries.push_back(std::move(entry));
      if (on_step) on_step(++done, total);
    }
  }
  AutotuneResult result;
  for (const auto& [key, g] : groups) {
    for (const auto& name : g.members) result.layouts[name] = WeightLayout::Row;
  }
  result.table = Json{{"enabled", true},
                      {"backend", "cuda"},
                      {"device", target_fingerprint()},
                      {"buckets", buckets},
                      {"selection", "per (n, k) and bucket: the fastest of up to " + std::to_string(kCandidates) +
                                        " cuBLASLt heuristic proposals and, for m <= 8, kiln-gemv"
                                        " (gate_up shapes: kiln-gemv writing the SiLU·mul against cuBLASLt plus the"
                                        " silu_mul kernel)"
                                        "; median of " + std::to_string(kRepeats) +
                                        " event-timed runs with the L2 flushed before each"},
                      {"entries", entries}};
  return result;
}

}  // namespace kiln::cuda
