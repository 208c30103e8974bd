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
// A truncated draw usually keeps a few tokens of a 128k vocab, so each row first keeps the tokens
// within one of these distances of its largest scaled logit (the smallest distance that holds the
// cuts, at most kCap tokens) in shared memory, and the searches pass over those instead of the row.
constexpr int kLevels = 8;
constexpr int kCap = 4096;
__constant__ float kLevel[kLevels] = {1.0f, 2.0f, 4.0f, 8.0f, 12.0f, 16.0f, 20.0f, 24.0f};

// The host sampler's candidate order as one integer, ascending = most likely first, ties by the
// lower token (runtime/sampler.cpp candidate()).
__device__ __forceinline__ unsigned long long order_key(float scaled, uint32_t token) {
  uint32_t b = __float_as_uint(__fadd_rn(scaled, 0.0f));  // -0 ties with +0
  b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return (static_cast<unsigned long long>(~b) << 32) | token;
}

__device__ __forceinline__ unsigned long long fixed(double w) { return __double2ull_rn(w * kUnit); }

// The scaled logit a key was made from (-0 comes back +0, which weighs the same).
__device__ __forceinline__ float scaled_of(unsigned long long key) {
  const uint32_t b = ~static_cast<uint32_t>(key >> 32);
  return __uint_as_float((b & 0x80000000u) ? (b & 0x7fffffffu) : ~b);
}

// One row as the host sampler sees it: logits / temperature, with the largest of them `top`. Its
// candidates are the whole row, or (`kept`) the keys of a prefix of the candidate order: every
// candidate with a key at or below some bound, so counts and masses up to any key in it are the
// row's own.
struct Row {
  const float* logits;
  int64_t vocab;
  float temperature;
  float top;
  const unsigned long long* kept = nullptr;
  int64_t count = 0;  // candidates: vocab, or the size of the kept prefix
  __device__ float scaled(int64_t t) const { return __fdiv_rn(logits[t], temperature); }
  __device__ unsigned long long key(int64_t i) const {
    return kept ? kept[i] : order_key(scaled(i), static_cast<uint32_t>(i));
  }
  // The weights the host sums: float exp for the whole-vocab normaliser and the token-order draw,
  // double exp for the sorted candidates' probabilities.
  __device__ double float_weight(float s) const { return static_cast<double>(expf(__fsub_rn(s, top))); }
  __device__ double double_weight(float s) const { return exp(static_cast<double>(s) - static_cast<double>(top)); }
};

struct Shared {
  unsigned long long kept[kCap];
  unsigned long long level_mass[kLevels];
  unsigned int level_count[kLevels];
  unsigned int kept_count;
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
  for (int64_t i = threadIdx.x; i < row.count; i += kThreads) {
    const unsigned long long key = row.key(i);
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
    for (int64_t base = 0; base < row.count; base += kThreads) {
      const int64_t i = base + threadIdx.x;
      bool in = false;
      unsigned digit = 0;
      unsigned long long m = 0;
      if (i < row.count) {
        const unsigned long long key = row.key(i);
        in = high == 64 || (key >> high) == (prefix >> high);
        if (in) {
          digit = static_cast<unsigned>(key >> shift) & (kBins - 1);
          if (kMass) m = fixed(row.double_weight(scaled_of(key)));
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

// Sum over the candidates with key <= bound of their fixed-point double-exp weights.
__device__ unsigned long long mass_up_to(const Row& row, unsigned long long bound, Shared& sh) {
  unsigned long long sum = 0;
  for (int64_t i = threadIdx.x; i < row.count; i += kThreads) {
    const unsigned long long key = row.key(i);
    if (key <= bound) sum += fixed(row.double_weight(scaled_of(key)));
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

// top_k limits the candidates when it is below the vocab: to top_k of them.
__device__ __forceinline__ unsigned top_k_limit(const SampleDraw& d, int64_t vocab) {
  return d.top_k > 0 && d.top_k < vocab ? static_cast<unsigned>(d.top_k) : static_cast<unsigned>(vocab);
}

// Top-k, min-p and top-p (Sampler::draw_truncated): each cut is the key of the last candidate
// kept, found by search(); the draw is the first candidate whose cumulative weight exceeds
// u x the kept weight. `weight_sum` is the row's float-exp normaliser (the host's whole-vocab sum).
// Over a kept prefix, every count and mass up to a key inside it is the whole row's, so the token
// is the one the whole row gives, unless a cut or the draw may lie beyond the prefix: then this
// returns false and the row is drawn whole.
__device__ bool draw_truncated(const Row& row, const SampleDraw& d, unsigned long long weight_sum, Shared& sh,
                               int32_t* token) {
  const bool part = row.kept != nullptr;
  const unsigned limit = top_k_limit(d, row.vocab);
  const bool by_k = limit < row.vocab;
  unsigned long long keep = kAll;  // the last kept candidate's key
  unsigned long long total;        // the normaliser of the probabilities, fixed point
  if (by_k) {
    keep = search<false>(row, [limit](unsigned c, unsigned long long) { return c >= limit; }, sh);
    if (part && keep == kAll) return false;
    total = mass_up_to(row, keep, sh);
  } else {
    total = weight_sum;
  }
  const double total_d = static_cast<double>(total) / kUnit;
  if (d.min_p > 0.0f) {
    // Probabilities fall with the key, so those at or above the floor are a prefix of the order.
    const double floor = static_cast<double>(d.min_p) * (1.0 / total_d);
    unsigned long long above = 0;
    for (int64_t i = threadIdx.x; i < row.count; i += kThreads) {
      above += row.double_weight(scaled_of(row.key(i))) / total_d >= floor ? 1 : 0;
    }
    above = block_reduce(above, Add{}, sh);
    if (part && above == static_cast<unsigned long long>(row.count)) return false;  // the floor may lie beyond
    const unsigned n = static_cast<unsigned>(std::max<unsigned long long>(above, 1));
    if (n < limit) keep = search<false>(row, [n](unsigned c, unsigned long long) { return c >= n; }, sh);
  }
  if (d.top_p < 1.0f) {
    const double need = static_cast<double>(d.top_p) * static_cast<double>(total);
    const unsigned long long cut =
        search<true>(row, [need](unsigned, unsigned long long m) { return static_cast<double>(m) >= need; }, sh);
    if (part && cut == kAll) return false;
    keep = std::min(keep, cut);
  }
  if (part && keep == kAll) return false;
  const double r = d.u * static_cast<double>(mass_up_to(row, keep, sh));
  unsigned long long pick =
      search<true>(row, [r](unsigned, unsigned long long m) { return r < static_cast<double>(m); }, sh);
  if (pick > keep) {
    // Rounding left r at or past the kept weight: the last kept candidate, as the host.
    const unsigned v = static_cast<unsigned>(row.vocab);
    pick = keep != kAll ? keep : search<false>(row, [v](unsigned c, unsigned long long) { return c >= v; }, sh);
  }
  *token = static_cast<int32_t>(static_cast<uint32_t>(pick));
  return true;
}

// One pass over the row: returns its float-exp normaliser, and leaves in sh.level_count/level_mass,
// for each level, the tokens whose scaled logit lies within that distance of the top and their
// float-exp mass (fixed point; summed in float within a thread, which only guides choose_level).
// Registers per thread, one warp reduction per level: the few bins that most tokens fall in would
// serialise shared atomics.
__device__ unsigned long long measure(const Row& row, Shared& sh) {
  if (threadIdx.x < kLevels) {
    sh.level_count[threadIdx.x] = 0;
    sh.level_mass[threadIdx.x] = 0;
  }
  __syncthreads();
  unsigned count[kLevels] = {};
  float mass[kLevels] = {};
  unsigned long long total = 0;
  for (int64_t t = threadIdx.x; t < row.vocab; t += kThreads) {
    const float s = row.scaled(t);
    const float w = static_cast<float>(row.float_weight(s));
    total += fixed(static_cast<double>(w));
    const float distance = __fsub_rn(row.top, s);
#pragma unroll
    for (int j = 0; j < kLevels; ++j) {
      if (distance <= kLevel[j]) {
        ++count[j];
        mass[j] += w;
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kLevels; ++j) {
    const unsigned long long c = warp_reduce(static_cast<unsigned long long>(count[j]), Add{});
    const unsigned long long m = warp_reduce(fixed(static_cast<double>(mass[j])), Add{});
    if (threadIdx.x % kWarp == 0) {
      atomicAdd(&sh.level_count[j], static_cast<unsigned>(c));
      atomicAdd(&sh.level_mass[j], m);
    }
  }
  return block_reduce(total, Add{}, sh);  // its barrier publishes the levels too
}

// The smallest level whose tokens (at most kCap) hold the cuts of d: top_k's (which the normaliser
// needs), else top_p's mass (float sums of float exps, with room for the exact double-exp sums the
// search makes) or min_p's floor (every weight beyond the level below half of it); -1 when none
// does. A wrong guess costs only time: draw_truncated then falls back to the whole row.
__device__ int choose_level(const SampleDraw& d, int64_t vocab, unsigned long long weight_sum, const Shared& sh) {
  const unsigned limit = top_k_limit(d, vocab);
  const double total = static_cast<double>(weight_sum);
  const double need = static_cast<double>(d.top_p) * total + 1e-4 * total + 0x1p20;
  for (int j = 0; j < kLevels; ++j) {
    const unsigned c = sh.level_count[j];
    if (c > static_cast<unsigned>(kCap)) return -1;
    const bool holds = limit < vocab ? c >= limit
                                     : (d.top_p < 1.0f && static_cast<double>(sh.level_mass[j]) >= need) ||
                                           (d.min_p > 0.0f && expf(-kLevel[j]) < 0.5f * d.min_p);
    if (holds) return j;
  }
  return -1;
}

// Narrows `row` to the tokens within `level` of its top (a prefix of the candidate order), their
// keys in sh.kept in no particular order: the searches only count and sum.
__device__ void keep_within(Row& row, float level, Shared& sh) {
  if (threadIdx.x == 0) sh.kept_count = 0;
  __syncthreads();
  const unsigned lane = threadIdx.x % kWarp;
  for (int64_t base = 0; base < row.vocab; base += kThreads) {
    const int64_t t = base + threadIdx.x;
    float s = 0.0f;
    bool in = false;
    if (t < row.vocab) {
      s = row.scaled(t);
      in = __fsub_rn(row.top, s) <= level;
    }
    const unsigned ballot = __ballot_sync(kFull, in);
    if (!ballot) continue;
    unsigned first = 0;
    if (lane == 0) first = atomicAdd(&sh.kept_count, static_cast<unsigned>(__popc(ballot)));
    first = __shfl_sync(kFull, first, 0);
    if (in) sh.kept[first + __popc(ballot & ((1u << lane) - 1))] = order_key(s, static_cast<uint32_t>(t));
  }
  __syncthreads();
  row.kept = sh.kept;
  row.count = sh.kept_count;
}

__global__ void __launch_bounds__(kThreads) sample_kernel(const float* logits, int64_t vocab, const SampleJob* jobs,
                                                          int32_t* tokens) {
  __shared__ Shared sh;
  wait_for_producer();
  let_consumer_start();
  const SampleJob job = jobs[blockIdx.x];
  Row row{logits + static_cast<int64_t>(job.row) * vocab, vocab, job.draw.temperature, 0.0f, nullptr, vocab};
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
  int32_t token;
  if (d.top_k == 0 && d.top_p >= 1.0f && d.min_p == 0.0f) {
    token = draw_in_token_order(row, d.u, sh);
  } else {
    const unsigned long long weight_sum = measure(row, sh);
    const int level = choose_level(d, vocab, weight_sum, sh);
    Row from = row;
    if (level >= 0) keep_within(from, kLevel[level], sh);
    // The whole row when the kept prefix may not hold the draw (a whole row always draws).
    while (!draw_truncated(from, d, weight_sum, sh, &token)) from = row;
  }
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
