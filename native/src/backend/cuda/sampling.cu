#include "backend/cuda/sampling.h"

#include <algorithm>
#include <cstring>

#include "backend/cuda/check.h"
#include "backend/cuda/launch.cuh"

namespace kiln::cuda {

namespace {

constexpr int kWarp = 32;
constexpr unsigned kFull = 0xffffffffu;
constexpr int kThreads = 1024;  // one block per row; a row of a 128k vocab is ~125 tokens a thread
constexpr int kWarps = kThreads / kWarp;
static_assert(kWarps == kWarp, "the block reductions give each lane of a warp one warp's partial");
constexpr int kDigitBits = 8;
constexpr int kBins = 1 << kDigitBits;
constexpr int kBinsPerLane = kBins / kWarp;
// Probability mass is summed in fixed point, 2^-44 of the top token's weight (which is 1) a unit:
// integer sums are exact whatever order threads add in, so a seeded request draws the same token
// on every run, and a vocab below 2^20 sums within 64 bits. A weight below 2^-44 counts as zero
// (the host could draw it with a probability below 1e-13).
constexpr double kUnit = 0x1.0p44;
constexpr unsigned long long kAll = ~0ull;  // as a key bound: every candidate; as a search result: none

// The host sampler's candidate order as one integer, ascending = most likely first, ties by the
// lower token (runtime/sampler.cpp candidate()).
__device__ __forceinline__ unsigned long long order_key(float scaled, uint32_t token) {
  uint32_t b = __float_as_uint(__fadd_rn(scaled, 0.0f));  // -0 ties with +0
  b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return (static_cast<unsigned long long>(~b) << 32) | token;
}

__device__ __forceinline__ unsigned long long fixed(double w) { return __double2ull_rn(w * kUnit); }

// One row as the host sampler sees it: logits / temperature, with the largest of them `top`.
struct Row {
  const float* logits;
  int64_t vocab;
  float temperature;
  float top;
  __device__ float scaled(int64_t t) const { return __fdiv_rn(logits[t], temperature); }
  // The weights the host sums: float exp for the whole-vocab normaliser and the token-order draw,
  // double exp for the sorted candidates' probabilities.
  __device__ double float_weight(float s) const { return static_cast<double>(expf(__fsub_rn(s, top))); }
  __device__ double double_weight(float s) const { return exp(static_cast<double>(s) - static_cast<double>(top)); }
};

struct Shared {
  unsigned int count[kBins];
  unsigned long long mass[kBins];
  unsigned long long partial[kWarps];
  unsigned long long found;
  unsigned long long below_mass;
  unsigned int below_count;
  unsigned int chosen_count;
  int digit;
};

template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
  for (int o = kWarp / 2; o > 0; o /= 2) v = op(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

struct Add {
  __device__ unsigned long long operator()(unsigned long long a, unsigned long long b) const { return a + b; }
};
struct Max {
  __device__ unsigned long long operator()(unsigned long long a, unsigned long long b) const { return a > b ? a : b; }
};

// Every thread gets the block's reduction; `sh.partial` is free again on return.
template <typename Op>
__device__ unsigned long long block_reduce(unsigned long long v, Op op, Shared& sh) {
  v = warp_reduce(v, op);
  if (threadIdx.x % kWarp == 0) sh.partial[threadIdx.x / kWarp] = v;
  __syncthreads();
  v = warp_reduce(sh.partial[threadIdx.x % kWarp], op);
  __syncthreads();
  return v;
}

// The block's exclusive prefix sum of `v` in thread order, and the total.
__device__ unsigned long long block_exclusive_sum(unsigned long long v, unsigned long long* total, Shared& sh) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  unsigned long long x = v;
  for (int o = 1; o < kWarp; o *= 2) {
    const unsigned long long y = __shfl_up_sync(kFull, x, o);
    if (lane >= o) x += y;
  }
  if (lane == kWarp - 1) sh.partial[warp] = x;
  __syncthreads();
  unsigned long long w = sh.partial[lane];
  for (int o = 1; o < kWarp; o *= 2) {
    const unsigned long long y = __shfl_up_sync(kFull, w, o);
    if (lane >= o) w += y;
  }
  const unsigned long long before = __shfl_sync(kFull, w, (warp + kWarp - 1) % kWarp);
  *total = __shfl_sync(kFull, w, kWarp - 1);
  __syncthreads();
  return (warp > 0 ? before : 0) + x - v;
}

// Adds one token per active lane to its digit's bin. The tokens of a warp mostly share a digit
// (neighbouring logits share exponent bits), so a uniform warp adds once instead of 32 times to
// one shared address.
template <bool kMass>
__device__ __forceinline__ void add_to_bin(bool in, unsigned digit, unsigned long long m, Shared& sh) {
  const unsigned active = __ballot_sync(kFull, in);
  if (!active) return;
  const unsigned lead = __shfl_sync(kFull, digit, __ffs(active) - 1);
  if (__all_sync(kFull, !in || digit == lead)) {
    if (kMass) m = warp_reduce(m, Add{});
    if (threadIdx.x % kWarp == 0) {
      atomicAdd(&sh.count[lead], static_cast<unsigned>(__popc(active)));
      if (kMass) atomicAdd(&sh.mass[lead], m);
    }
  } else if (in) {
    atomicAdd(&sh.count[digit], 1u);
    if (kMass) atomicAdd(&sh.mass[digit], m);
  }
}

// The key of the one candidate whose key agrees with `prefix` in the bits from `shift` up.
__device__ unsigned long long find_unique(const Row& row, unsigned long long prefix, int shift, Shared& sh) {
  for (int64_t t = threadIdx.x; t < row.vocab; t += kThreads) {
    const unsigned long long key = order_key(row.scaled(t), static_cast<uint32_t>(t));
    if ((key >> shift) == (prefix >> shift)) sh.found = key;
  }
  __syncthreads();
  const unsigned long long key = sh.found;
  __syncthreads();
  return key;
}

// The smallest candidate key K for which enough(count, mass) holds, count and mass (fixed point,
// double weights; only with kMass) taken over the candidates with key <= K: the cut or draw
// position in sorted order, without the sort. One pass over the row per 8-bit digit of the key,
// most significant first, each histogramming the candidates that agree with the digits chosen so
// far; it stops early once the chosen digit holds one candidate. kAll when no K is enough.
template <bool kMass, typename Enough>
__device__ unsigned long long search(const Row& row, Enough enough, Shared& sh) {
  unsigned long long prefix = 0, below_mass = 0;
  unsigned below_count = 0;
  for (int shift = 64 - kDigitBits; shift >= 0; shift -= kDigitBits) {
    for (int i = threadIdx.x; i < kBins; i += kThreads) {
      sh.count[i] = 0;
      sh.mass[i] = 0;
    }
    __syncthreads();
    const int high = shift + kDigitBits;
    for (int64_t base = 0; base < row.vocab; base += kThreads) {
      const int64_t t = base + threadIdx.x;
      bool in = false;
      unsigned digit = 0;
      unsigned long long m = 0;
      if (t < row.vocab) {
        const float s = row.scaled(t);
        const unsigned long long key = order_key(s, static_cast<uint32_t>(t));
        in = high == 64 || (key >> high) == (prefix >> high);
        if (in) {
          digit = static_cast<unsigned>(key >> shift) & (kBins - 1);
          if (kMass) m = fixed(row.double_weight(s));
        }
      }
      add_to_bin<kMass>(in, digit, m, sh);
    }
    __syncthreads();
    if (threadIdx.x < kWarp) {
      // Each lane sums 8 consecutive bins; a warp scan finds the first lane whose running total is
      // enough, and that lane walks its bins.
      const int lane = threadIdx.x;
      unsigned c = 0;
      unsigned long long m = 0;
      for (int j = 0; j < kBinsPerLane; ++j) {
        c += sh.count[lane * kBinsPerLane + j];
        m += sh.mass[lane * kBinsPerLane + j];
      }
      unsigned cc = c;
      unsigned long long mm = m;
      for (int o = 1; o < kWarp; o *= 2) {
        const unsigned yc = __shfl_up_sync(kFull, cc, o);
        const unsigned long long ym = __shfl_up_sync(kFull, mm, o);
        if (lane >= o) {
          cc += yc;
          mm += ym;
        }
      }
      const unsigned hit = __ballot_sync(kFull, enough(below_count + cc, below_mass + mm));
      if (hit == 0) {
        if (lane == 0) sh.digit = -1;
      } else if (lane == __ffs(hit) - 1) {
        unsigned bc = below_count + cc - c;
        unsigned long long bm = below_mass + mm - m;
        for (int j = 0; j < kBinsPerLane; ++j) {
          const int bin = lane * kBinsPerLane + j;
          if (enough(bc + sh.count[bin], bm + sh.mass[bin])) {
            sh.digit = bin;
            sh.below_count = bc;
            sh.below_mass = bm;
            sh.chosen_count = sh.count[bin];
            break;
          }
          bc += sh.count[bin];
          bm += sh.mass[bin];
        }
      }
    }
    __syncthreads();
    const int digit = sh.digit;
    const unsigned chosen = sh.chosen_count;
    below_count = sh.below_count;
    below_mass = sh.below_mass;
    __syncthreads();
    if (digit < 0) return kAll;
    prefix |= static_cast<unsigned long long>(digit) << shift;
    if (chosen == 1 && shift > 0) return find_unique(row, prefix, shift, sh);
  }
  return prefix;
}

// Sum over the candidates with key <= bound of their fixed-point weights (float or double exp).
template <bool kFloatWeight>
__device__ unsigned long long mass_up_to(const Row& row, unsigned long long bound, Shared& sh) {
  unsigned long long sum = 0;
  for (int64_t t = threadIdx.x; t < row.vocab; t += kThreads) {
    const float s = row.scaled(t);
    if (bound != kAll && order_key(s, static_cast<uint32_t>(t)) > bound) continue;
    sum += fixed(kFloatWeight ? row.float_weight(s) : row.double_weight(s));
  }
  return block_reduce(sum, Add{}, sh);
}

// Temperature alone: the inverse CDF in token order (Sampler::draw_untruncated). Each thread owns a
// contiguous run of tokens; a block scan of the runs' sums finds the run where the cumulative
// weight first exceeds u x total, and its thread walks it.
__device__ int32_t draw_in_token_order(const Row& row, double u, Shared& sh) {
  const int64_t run = (row.vocab + kThreads - 1) / kThreads;
  const int64_t begin = std::min<int64_t>(row.vocab, threadIdx.x * run);
  const int64_t end = std::min<int64_t>(row.vocab, begin + run);
  unsigned long long sum = 0, last_possible = 0;  // token + 1 of the run's last nonzero weight
  for (int64_t t = begin; t < end; ++t) {
    const unsigned long long w = fixed(row.float_weight(row.scaled(t)));
    sum += w;
    if (w) last_possible = static_cast<unsigned long long>(t) + 1;
  }
  unsigned long long total = 0;
  const unsigned long long before = block_exclusive_sum(sum, &total, sh);
  if (threadIdx.x == 0) sh.found = kAll;
  __syncthreads();
  const double r = u * static_cast<double>(total);
  if (static_cast<double>(before) <= r && r < static_cast<double>(before + sum)) {
    unsigned long long acc = before;
    for (int64_t t = begin; t < end; ++t) {
      acc += fixed(row.float_weight(row.scaled(t)));
      if (r < static_cast<double>(acc)) {
        sh.found = static_cast<unsigned long long>(t);
        break;
      }
    }
  }
  __syncthreads();
  const unsigned long long found = sh.found;
  // Rounding left r at or past the sum: the last token that could be drawn, as the host.
  const unsigned long long last = block_reduce(last_possible, Max{}, sh);
  return static_cast<int32_t>(found != kAll ? found : last - 1);
}

// Top-k, min-p and top-p (Sampler::draw_truncated): each cut is the key of the last candidate
// kept, found by search(); the draw is the first candidate whose cumulative weight exceeds
// u x the kept weight.
__device__ int32_t draw_truncated(const Row& row, const SampleDraw& d, Shared& sh) {
  const bool by_k = d.top_k > 0 && d.top_k < row.vocab;
  const unsigned limit = by_k ? static_cast<unsigned>(d.top_k) : static_cast<unsigned>(row.vocab);
  unsigned long long keep = kAll;  // the last kept candidate's key
  unsigned long long total;        // the normaliser of the probabilities, fixed point
  if (by_k) {
    keep = search<false>(row, [limit](unsigned c, unsigned long long) { return c >= limit; }, sh);
    total = mass_up_to<false>(row, keep, sh);
  } else {
    total = mass_up_to<true>(row, kAll, sh);
  }
  const double total_d = static_cast<double>(total) / kUnit;
  if (d.min_p > 0.0f) {
    // Probabilities fall with the key, so those at or above the floor are a prefix of the order.
    const double floor = static_cast<double>(d.min_p) * (1.0 / total_d);
    unsigned long long above = 0;
    for (int64_t t = threadIdx.x; t < row.vocab; t += kThreads) {
      above += row.double_weight(row.scaled(t)) / total_d >= floor ? 1 : 0;
    }
    const unsigned n = static_cast<unsigned>(std::max<unsigned long long>(block_reduce(above, Add{}, sh), 1));
    if (n < limit) keep = search<false>(row, [n](unsigned c, unsigned long long) { return c >= n; }, sh);
  }
  if (d.top_p < 1.0f) {
    const double need = static_cast<double>(d.top_p) * static_cast<double>(total);
    const unsigned long long cut =
        search<true>(row, [need](unsigned, unsigned long long m) { return static_cast<double>(m) >= need; }, sh);
    keep = std::min(keep, cut);
  }
  const double r = d.u * static_cast<double>(mass_up_to<false>(row, keep, sh));
  unsigned long long pick =
      search<true>(row, [r](unsigned, unsigned long long m) { return r < static_cast<double>(m); }, sh);
  if (pick > keep) {
    // Rounding left r at or past the kept weight: the last kept candidate, as the host.
    const unsigned v = static_cast<unsigned>(row.vocab);
    pick = keep != kAll ? keep : search<false>(row, [v](unsigned c, unsigned long long) { return c >= v; }, sh);
  }
  return static_cast<int32_t>(static_cast<uint32_t>(pick));
}

__global__ void __launch_bounds__(kThreads) sample_kernel(const float* logits, int64_t vocab, const SampleJob* jobs,
                                                          int32_t* tokens) {
  __shared__ Shared sh;
  wait_for_producer();
  let_consumer_start();
  const SampleJob job = jobs[blockIdx.x];
  Row row{logits + static_cast<int64_t>(job.row) * vocab, vocab, job.draw.temperature, 0.0f};
  // The bits of the largest logit, as an order-preserving integer so the block reduces integers.
  unsigned long long best = 0;
  for (int64_t t = threadIdx.x; t < vocab; t += kThreads) {
    const uint32_t b = __float_as_uint(row.logits[t]);
    best = max(best, static_cast<unsigned long long>((b & 0x80000000u) ? ~b : (b | 0x80000000u)));
  }
  const uint32_t ordered = static_cast<uint32_t>(block_reduce(best, Max{}, sh));
  const float max_logit = __uint_as_float((ordered & 0x80000000u) ? (ordered & 0x7fffffffu) : ~ordered);
  row.top = __fdiv_rn(max_logit, row.temperature);
  const SampleDraw& d = job.draw;
  const int32_t token = d.top_k == 0 && d.top_p >= 1.0f && d.min_p == 0.0f ? draw_in_token_order(row, d.u, sh)
                                                                             : draw_truncated(row, d, sh);
  if (threadIdx.x == 0) tokens[blockIdx.x] = token;
}

}  // namespace

void sample_rows(const float* logits, int64_t vocab, const SampleJob* jobs, int64_t n, int32_t* tokens,
                 cudaStream_t stream) {
  if (n == 0) return;
  launch_kernel("sample_kernel", sample_kernel, dim3(static_cast<unsigned>(n)), dim3(kThreads), stream, logits, vocab,
                jobs, tokens);
}

void DeviceSampler::enqueue(const float* logits, int64_t vocab, const std::vector<SampleJob>& jobs,
                            cudaStream_t stream) {
  const auto n = static_cast<int64_t>(jobs.size());
  if (n == 0) return;
  if (n > capacity_) {
    capacity_ = std::max<int64_t>(n, 2 * capacity_);
    jobs_ = DeviceBuffer(static_cast<size_t>(capacity_) * sizeof(SampleJob), "sampling jobs");
    tokens_ = DeviceBuffer(static_cast<size_t>(capacity_) * sizeof(int32_t), "sampled tokens");
    host_jobs_.reserve(jobs_.bytes());
    host_tokens_.reserve(tokens_.bytes());
  }
  const size_t bytes = static_cast<size_t>(n) * sizeof(SampleJob);
  std::memcpy(host_jobs_.get(), jobs.data(), bytes);
  KILN_CUDA_CHECK(cudaMemcpyAsync(jobs_.get(), host_jobs_.get(), bytes, cudaMemcpyHostToDevice, stream));
  sample_rows(logits, vocab, jobs_.get<SampleJob>(), n, tokens_.get<int32_t>(), stream);
  KILN_CUDA_CHECK(cudaMemcpyAsync(host_tokens_.get(), tokens_.get(), static_cast<size_t>(n) * sizeof(int32_t),
                                  cudaMemcpyDeviceToHost, stream));
}

}  // namespace kiln::cuda
