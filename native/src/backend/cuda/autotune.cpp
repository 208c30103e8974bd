#include "backend/cuda/autotune.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <random>

#include "backend/cuda/check.h"
#include "backend/cuda/device.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/gemv.h"
#include "core/error.h"

namespace kiln::cuda {

namespace {

constexpr int kCandidates = 32;
constexpr int kRepeats = 7;

struct ShapeGroup {
  int64_t n = 0;
  int64_t k = 0;
  const TensorBlob* weight = nullptr;
  bool logits = false;
  std::vector<std::string> members;
};

std::vector<uint16_t> bf16_weight(const TensorBlob& w) {
  const size_t count = w.bytes.size() / dtype_size(w.dtype);
  std::vector<uint16_t> out(count);
  if (w.dtype == DType::BF16) {
    std::copy_n(reinterpret_cast<const uint16_t*>(w.bytes.data()), count, out.data());
    return out;
  }
  if (w.dtype != DType::F32 && w.dtype != DType::F16) {
    throw Error("CUDA autotune: weight " + w.name + " is " + dtype_name(w.dtype) + "; the CUDA target runs bf16 GEMMs");
  }
  std::vector<float> f(count);
  decode_to_f32(w.dtype, w.bytes.data(), f.data(), count);
  encode_from_f32(DType::BF16, f.data(), out.data(), count);
  return out;
}

class EventPair {
 public:
  EventPair() {
    KILN_CUDA_CHECK(cudaEventCreate(&start_));
    KILN_CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~EventPair() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  cudaEvent_t start() const { return start_; }
  cudaEvent_t stop() const { return stop_; }
  float elapsed_us() const {
    KILN_CUDA_CHECK(cudaEventSynchronize(stop_));
    float ms = 0.0f;
    KILN_CUDA_CHECK(cudaEventElapsedTime(&ms, start_, stop_));
    return ms * 1000.0f;
  }

 private:
  cudaEvent_t start_ = nullptr;
  cudaEvent_t stop_ = nullptr;
};

double round2(double v) { return std::round(v * 100) / 100; }

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
  std::map<std::pair<int64_t, int64_t>, ShapeGroup> groups;
  for (const auto& name : gemm_weights) {
    const auto it = by_name.find(name);
    if (it == by_name.end()) throw Error("CUDA autotune: GEMM weight " + name + " is missing");
    const TensorBlob& w = *it->second;
    ShapeGroup& g = groups[{w.shape[0], w.shape[1]}];
    if (!g.weight) g = ShapeGroup{w.shape[0], w.shape[1], &w, false, {}};
    g.logits = g.logits || name == logits_weight;
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
    const std::vector<uint16_t> host_w = bf16_weight(*g.weight);
    DeviceBuffer w(host_w.size() * 2, "autotune weight " + g.weight->name);
    KILN_CUDA_CHECK(cudaMemcpy(w.get(), host_w.data(), w.bytes(), cudaMemcpyHostToDevice));
    std::vector<float> host_x(static_cast<size_t>(max_m * g.k));
    for (float& v : host_x) v = uniform(rng);
    std::vector<uint16_t> host_xb(host_x.size());
    encode_from_f32(DType::BF16, host_x.data(), host_xb.data(), host_x.size());
    DeviceBuffer x(host_xb.size() * 2, "autotune input");
    KILN_CUDA_CHECK(cudaMemcpy(x.get(), host_xb.data(), x.bytes(), cudaMemcpyHostToDevice));
    DeviceBuffer y(static_cast<size_t>(max_m * g.n) * 4, "autotune output");
    LtGemm gemm(context, g.n, g.k);

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
        std::vector<double> times;
        for (int rep = 0; rep < kRepeats; ++rep) {
          KILN_CUDA_CHECK(cudaMemsetAsync(flush.get(), rep, flush.bytes(), stream));
          KILN_CUDA_CHECK(cudaEventRecord(events.start(), stream));
          gemm.run(algo, w.get(), x.get(), m, y.get<float>(), 0.0f, stream);
          KILN_CUDA_CHECK(cudaEventRecord(events.stop(), stream));
          times.push_back(events.elapsed_us());
        }
        std::nth_element(times.begin(), times.begin() + kRepeats / 2, times.end());
        const double median = times[kRepeats / 2];
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
      bool gemv_wins = false;
      Json gemv_us = nullptr;
      if (gemv_supports(m, g.k)) {
        std::vector<double> times;
        for (int rep = 0; rep < kRepeats; ++rep) {
          KILN_CUDA_CHECK(cudaMemsetAsync(flush.get(), rep, flush.bytes(), stream));
          KILN_CUDA_CHECK(cudaEventRecord(events.start(), stream));
          gemv_bf16(w.get<bf16>(), x.get<bf16>(), m, g.n, g.k, y.get<float>(), 0.0f, stream);
          KILN_CUDA_CHECK(cudaEventRecord(events.stop(), stream));
          times.push_back(events.elapsed_us());
        }
        std::nth_element(times.begin(), times.begin() + kRepeats / 2, times.end());
        gemv_us = round2(times[kRepeats / 2]);
        if (times[kRepeats / 2] < best_us) {
          gemv_wins = true;
          best_us = times[kRepeats / 2];
        }
      }
      entries.push_back(Json{{"op", "gemm"},
                             {"backend", "cuda"},
                             {"n", g.n},
                             {"k", g.k},
                             {"dtype", "bf16"},
                             {"layout", "row"},
                             {"bucket", m},
                             {"tactic", gemv_wins ? "kiln-gemv" : "cublaslt"},
                             {"algo", algo_to_hex(winner)},
                             {"config", algo_config(winner)},
                             {"us", round2(best_us)},
                             {"cublaslt_us", round2(best_lt_us)},
                             {"kiln_gemv_us", gemv_us},
                             {"heuristic_first_us", candidates[0]["us"]},
                             {"weights", g.members.size()},
                             {"candidates", candidates}});
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
                                        " cuBLASLt heuristic proposals and, for m <= 8, kiln-gemv; median of " + std::to_string(kRepeats) +
                                        " event-timed runs with the L2 flushed before each"},
                      {"entries", entries}};
  return result;
}

}  // namespace kiln::cuda
