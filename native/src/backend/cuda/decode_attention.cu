#include "backend/cuda/decode_attention.h"

#include <cooperative_groups.h>

#include <array>
#include <atomic>
#include <cfloat>
#include <optional>
#include <string>
#include <type_traits>

#include "backend/cuda/check.h"
#include "backend/cuda/cp_async.cuh"
#include "backend/cuda/launch.cuh"
#include "backend/cuda/switches.h"

namespace kiln::cuda {

namespace {

constexpr int kThreads = 128;
constexpr int kWarp = 32;
constexpr int kVec = 8;  // each lane owns 8 consecutive dimensions of a row: one 16-byte bf16 load

// One lane's 8 cached elements as one load: 16 bytes of bf16, 8 of e4m3.
template <typename Kv>
using KvRaw = std::conditional_t<std::is_same_v<Kv, bf16>, uint4, uint2>;

__device__ __forceinline__ void load8(const float* p, float (&v)[kVec]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0];
  const float4 b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

__device__ __forceinline__ void unpack8(const uint4& raw, float (&v)[kVec]) {
  const auto* p = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int e = 0; e < kVec / 2; ++e) {
    const float2 f = __bfloat1622float2(p[e]);
    v[2 * e] = f.x;
    v[2 * e + 1] = f.y;
  }
}

// Cached elements as fp32: bf16 as they are, e4m3 times the cache scale.
__device__ __forceinline__ void unpack8(const uint4& raw, float (&v)[kVec], float) { unpack8(raw, v); }
__device__ __forceinline__ void unpack8(const uint2& raw, float (&v)[kVec], float scale) {
  const auto* p = reinterpret_cast<const __nv_fp8x2_e4m3*>(&raw);
#pragma unroll
  for (int e = 0; e < kVec / 2; ++e) {
    const float2 f = static_cast<float2>(p[e]);
    v[2 * e] = f.x * scale;
    v[2 * e + 1] = f.y * scale;
  }
}

// e4m3(v / scale), saturating as the CPU's conversion.
__device__ __forceinline__ uint2 pack8_fp8(const float (&v)[kVec], float scale) {
  const float inv = 1.0f / scale;
  union {
    uint2 raw;
    __nv_fp8x2_e4m3 e[kVec / 2];
  } pack;
#pragma unroll
  for (int e = 0; e < kVec / 2; ++e) pack.e[e] = __nv_fp8x2_e4m3(make_float2(v[2 * e] * inv, v[2 * e + 1] * inv));
  return pack.raw;
}

__device__ __forceinline__ void store8(const DecodeAttentionArgs& a, int64_t at, const float (&o)[kVec], float inv) {
  if (a.out_fp8) {
    const float q = inv / a.out_scale;
    union {
      uint2 raw;
      fp8 e[kVec];
    } pack;
#pragma unroll
    for (int e = 0; e < kVec; ++e) pack.e[e] = fp8(o[e] * q);  // saturating, as the CPU's conversion
    *reinterpret_cast<uint2*>(a.out_fp8 + at) = pack.raw;
  } else {
    union {
      uint4 raw;
      __nv_bfloat162 e[kVec / 2];
    } pack;
#pragma unroll
    for (int e = 0; e < kVec / 2; ++e) pack.e[e] = __floats2bfloat162_rn(o[2 * e] * inv, o[2 * e + 1] * inv);
    *reinterpret_cast<uint4*>(a.out + at) = pack.raw;
  }
}

// Grid: (token, KV head, split). A key row is read by kLanes lanes (16 bytes each); the block's
// kGroups lane groups take kKeys keys each per round, all loads of a round in flight together. Each
// group keeps its own online-softmax state for the G query heads; the groups are combined through
// shared memory at the end.
//
// Before wait_for_producer the block already loads the step metadata, its block table and its first
// round of cached keys and values, overlapping that chain of dependent loads with the QKV projection
// still running. Those were written by copies or kernels at least two launches back: a kernel only
// starts once every block of the one before it has passed its own wait (launch.cuh), so they are
// complete. Only the qkv rows (the projection's output) are read after the wait.
//
// Kv: the cache's element type, a separate instantiation per dtype (the bf16 one is the kernel as it
// was before fp8 caches).
//
// kFourPerSm: at most 128 registers, so four blocks share an SM, with half the keys a round; built
// for G = 4 only, whose other build is held to 168 registers and three blocks an SM (left alone, the
// compiler takes 193 and fits two). At batch 64 of Llama-3-8B the 512 blocks then run in one wave.
constexpr int blocks_per_sm(int g, bool four_per_sm) { return four_per_sm ? 4 : g == 4 ? 3 : 1; }

// kPipe (the four-per-SM build; KILN_DECODE_ATTENTION_PIPELINE=0 turns it off): the cached keys and values go
// through shared memory with cp.async, kStages - 1 rounds ahead of the round being scored, instead of
// into registers at the top of each round. Each thread copies exactly the chunks it later reads, so
// the stages need no barrier, only each thread's own cp.async.wait_group. Without it a block has one
// round of loads in flight and none while it computes: at batch 256 of the 8B shape the kernel reads
// the cache at 1.9 TB/s (Nsight Compute, 80 µs a layer). H200, 8B fp8, one engine, 3 interleaved
// rounds: batch 64 3.636 -> 3.579 ms a step, batch 256 7.618 -> 7.404.
constexpr int kStages = 3;

template <int D, int G, typename Kv, bool kFourPerSm, bool kPipe, bool kCluster>
__global__ __launch_bounds__(kThreads, blocks_per_sm(G, kFourPerSm))
void decode_attention_kernel(DecodeAttentionArgs a) {
  static_assert(!kFourPerSm || G == 4, "128 registers hold G <= 4 only");
  static_assert(!kPipe || kFourPerSm, "the staged rounds fit the static shared memory of the four-per-SM build only");
  constexpr int kLanes = D / kVec;
  constexpr int kGroups = kThreads / kLanes;
  // registers: G · (8 q + 8 acc) + kKeys · (G scores + 8 raw k/v)
  constexpr int kKeys = G >= 8 || kFourPerSm ? 2 : 4;
  constexpr int kRound = kGroups * kKeys;
  constexpr int kOut = G * kLanes;  // threads that combine: one per 8 output dimensions of a head
  constexpr int kHalf = D / 2;
  static_assert(kOut <= kThreads, "one combining thread per 8 output dimensions");
  static_assert(kRound >= kMaxAttentionSplits - 1, "the split arithmetic below");
  __shared__ float s_m[kGroups][G];
  __shared__ float s_l[kGroups][G];
  __shared__ __align__(16) float s_acc[kGroups][G][D];
  __shared__ bool s_last;
  __shared__ __align__(16) float s_part[kCluster ? G * D : 1];  // the block's merged partial (cluster merge)
  __shared__ float s_stat[kCluster ? G : 1][2];

  const int t = static_cast<int>(blockIdx.x);
  const int kvh = static_cast<int>(blockIdx.y);
  const int z = static_cast<int>(blockIdx.z);
  const int pos = a.step.token_position[t];
  const int first_key = a.window > 0 ? max(0, pos - static_cast<int>(a.window) + 1) : 0;
  const int n = pos - first_key + 1;
  // Whole rounds per block: (splits - 1) · chunk < n holds (kRound >= kMaxAttentionSplits - 1), so
  // every block below `splits` has keys and the last one ends at the new token.
  const int splits = min(static_cast<int>(gridDim.z), (n + kRound - 1) / kRound);
  if (z >= splits) return;
  const int chunk = (n + splits - 1) / splits;
  const int lo = first_key + z * chunk;
  const bool writer = z == splits - 1;
  // The new token's key and value come from the qkv row, not the cache.
  const int cached_hi = writer ? pos - 1 : lo + chunk - 1;

  const int64_t kv_dim = a.step.kv_heads * D;
  const int32_t* table = a.step.block_tables + static_cast<int64_t>(a.step.token_sequence[t]) * a.step.table_stride;
  const int page_size = static_cast<int>(a.step.page_size);
  const int group = threadIdx.x / kLanes;
  const int c = (threadIdx.x % kLanes) * kVec;
  using Raw = KvRaw<Kv>;
  Raw kr[kKeys], vr[kKeys];
  bool valid[kKeys];
  // [stage][key][k or v][thread]: a thread's slots are its own (no barrier between stages).
  __shared__ __align__(16) Raw s_kv[kPipe ? kStages : 1][kPipe ? kKeys : 1][2][kPipe ? kThreads : 1];
  const auto key_offset = [&](int kp) {
    return (static_cast<int64_t>(table[kp / page_size]) * page_size + kp % page_size) * kv_dim + kvh * D + c;
  };
  // kPipe: the copies of round `base` into `stage`, as one commit group (empty past the cached keys).
  const auto issue_round = [&](int base, int stage) {
#pragma unroll
    for (int k = 0; k < kKeys; ++k) {
      const int kp = base + k * kGroups + group;
      if (kp <= cached_hi) {
        const int64_t at = key_offset(kp);
        cp_async<sizeof(Raw)>(&s_kv[stage][k][0][threadIdx.x], static_cast<const Kv*>(a.kv.keys) + at);
        cp_async<sizeof(Raw)>(&s_kv[stage][k][1][threadIdx.x], static_cast<const Kv*>(a.kv.values) + at);
      }
    }
    cp_async_commit();
  };
  // kPipe: round `base` from `stage` into the registers the scoring reads (its group has landed).
  const auto take_round = [&](int base, int stage) {
#pragma unroll
    for (int k = 0; k < kKeys; ++k) {
      valid[k] = base + k * kGroups + group <= cached_hi;
      kr[k] = valid[k] ? s_kv[stage][k][0][threadIdx.x] : Raw{};
      vr[k] = valid[k] ? s_kv[stage][k][1][threadIdx.x] : Raw{};
    }
  };
  const auto load_round = [&](int base) {
#pragma unroll
    for (int k = 0; k < kKeys; ++k) {
      const int kp = base + k * kGroups + group;  // consecutive keys to neighbouring groups: coalesced
      valid[k] = kp <= cached_hi;
      kr[k] = vr[k] = Raw{};
      if (valid[k]) {
        const int64_t at = key_offset(kp);
        kr[k] = *reinterpret_cast<const Raw*>(static_cast<const Kv*>(a.kv.keys) + at);
        vr[k] = *reinterpret_cast<const Raw*>(static_cast<const Kv*>(a.kv.values) + at);
      }
    }
  };
  if constexpr (kPipe) {
#pragma unroll
    for (int stage = 0; stage < kStages - 1; ++stage) issue_round(lo + stage * kRound, stage);
  } else {
    load_round(lo);
  }
  const float* cos_row = a.cos + static_cast<int64_t>(pos) * kHalf;
  const float* sin_row = a.sin + static_cast<int64_t>(pos) * kHalf;
  // rotate_half: dimension i < D/2 pairs with i + D/2 as x_i·cos - x_{i+D/2}·sin, the upper one as
  // x·cos + x_i·sin.
  const int partner = c < kHalf ? c + kHalf : c - kHalf;
  const float sign = c < kHalf ? -1.0f : 1.0f;
  // The position's cos/sin rows into L1 while waiting (no kernel writes them; held in registers they
  // would cost 16 through the key loop). The first lane group covers every line of them.
  if (threadIdx.x < kLanes) {
    prefetch_l1(cos_row + (c % kHalf));
    prefetch_l1(sin_row + (c % kHalf));
  }

  wait_for_producer();
  let_consumer_start();

  const int64_t q_dim = a.step.heads * D;
  const float* row = a.qkv + static_cast<int64_t>(t) * (q_dim + 2 * kv_dim);
  if (writer && threadIdx.x < kLanes) {
    // The new token's key and value rows into L1 now, alongside the query rows: read only after the
    // key loop, they were one more L2 round trip on the step's critical path. (The rotation's partner
    // elements are other lanes' own: the group's c cover the whole row.)
    prefetch_l1(row + q_dim + kvh * D + c);
    prefetch_l1(row + q_dim + kv_dim + kvh * D + c);
  }
  // gamma: the QK norm's weights of this head (or null): the head's D elements are the x of its
  // group's kLanes lanes, so their sum of squares is a reduction over those lanes.
  // x, y: this lane's elements of the row at `at` and their rotation partners, as loaded.
  const auto rotate = [&](int64_t at, float (&x)[kVec], float (&y)[kVec], float (&out)[kVec], const float* gamma) {
    if (a.bias) {
      float bx[kVec], by[kVec];
      load8(a.bias + at + c, bx);
      load8(a.bias + at + partner, by);
#pragma unroll
      for (int e = 0; e < kVec; ++e) x[e] += bx[e], y[e] += by[e];
    }
    if (gamma) {
      float squares = 0.0f;
#pragma unroll
      for (int e = 0; e < kVec; ++e) squares += x[e] * x[e];
#pragma unroll
      for (int offset = kLanes / 2; offset > 0; offset /= 2) squares += __shfl_xor_sync(0xffffffffu, squares, offset);
      const float inv = rsqrtf(squares / static_cast<float>(D) + a.norm_eps);
      float gx[kVec], gy[kVec];
      load8(gamma + c, gx);
      load8(gamma + partner, gy);
#pragma unroll
      for (int e = 0; e < kVec; ++e) x[e] = gx[e] * (x[e] * inv), y[e] = gy[e] * (y[e] * inv);
    }
    // Rounded product by product (no fma): the cached key does not depend on what the compiler fuses.
    // cos/sin are read here, not held from the start: held, they cost 16 registers through the key loop.
    float cs[kVec], sn[kVec];
    load8(cos_row + (c % kHalf), cs);
    load8(sin_row + (c % kHalf), sn);
#pragma unroll
    for (int e = 0; e < kVec; ++e) out[e] = __fadd_rn(__fmul_rn(x[e], cs[e]), sign * __fmul_rn(y[e], sn[e]));
  };
  const auto load_rotated = [&](int64_t at, float (&out)[kVec], const float* gamma) {
    float x[kVec], y[kVec];
    load8(row + at + c, x);
    load8(row + at + partner, y);
    rotate(at, x, y, out, gamma);
  };
  // The query rows of kQBatch heads are all loaded before any is rotated: head by head, each head's
  // loads waited behind the previous head's bias and norm branches, one L2 round trip after another
  // on the step's critical path (the SASS of the GQA-4 build). Batches of 4 bound the registers the
  // loaded rows hold; the 128-register build, whose grids are many blocks deep (batch 64 and up, where
  // other blocks hide one block's latency), keeps one head at a time: more spilled.
  constexpr int kQBatch = kFourPerSm ? 1 : G < 4 ? G : 4;
  float q[G][kVec];
#pragma unroll
  for (int g0 = 0; g0 < G; g0 += kQBatch) {
    float x[kQBatch][kVec], y[kQBatch][kVec];
#pragma unroll
    for (int b = 0; b < kQBatch; ++b) {
      const int64_t at = static_cast<int64_t>(kvh * G + g0 + b) * D;
      load8(row + at + c, x[b]);
      load8(row + at + partner, y[b]);
    }
#pragma unroll
    for (int b = 0; b < kQBatch; ++b) {
      rotate(static_cast<int64_t>(kvh * G + g0 + b) * D, x[b], y[b], q[g0 + b], a.q_norm);
#pragma unroll
      for (int e = 0; e < kVec; ++e) q[g0 + b][e] *= a.scale;
    }
  }

  float m[G], l[G], acc[G][kVec];
#pragma unroll
  for (int g = 0; g < G; ++g) {
    m[g] = -FLT_MAX;
    l[g] = 0.0f;
#pragma unroll
    for (int e = 0; e < kVec; ++e) acc[g][e] = 0.0f;
  }
  // Online softmax over up to kKeys keys (valid[k] implies valid[k - 1]; scores already summed over
  // the group's lanes).
  // The values are unpacked one key at a time: all kKeys of them unpacked at once cost the registers
  // that kept more than two blocks from sharing an SM.
  const auto accumulate = [&](const float (&s)[kKeys][G], const Raw (&values)[kKeys], const bool (&ok)[kKeys]) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float top = s[0][g];
#pragma unroll
      for (int k = 1; k < kKeys; ++k) top = ok[k] ? fmaxf(top, s[k][g]) : top;
      const float m_new = fmaxf(m[g], top);
      const float correction = __expf(m[g] - m_new);
      l[g] *= correction;
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[g][e] *= correction;
      m[g] = m_new;
    }
#pragma unroll
    for (int k = 0; k < kKeys; ++k) {
      float vf[kVec];
      unpack8(values[k], vf, a.kv.v_scale);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        const float p = ok[k] ? __expf(s[k][g] - m[g]) : 0.0f;
        l[g] += p;
#pragma unroll
        for (int e = 0; e < kVec; ++e) acc[g][e] += p * vf[e];
      }
    }
  };
  // Query head g's score against one key: each lane's share of the dot product, summed over the
  // lanes that hold the key.
  const auto score = [&](const float (&kf)[kVec], int g) {
    float dot = 0.0f;
#pragma unroll
    for (int e = 0; e < kVec; ++e) dot += q[g][e] * kf[e];
#pragma unroll
    for (int offset = kLanes / 2; offset > 0; offset /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
    return dot;
  };

  for (int base = lo, round = 0; base <= cached_hi; base += kRound, ++round) {
    if constexpr (kPipe) {
      issue_round(base + (kStages - 1) * kRound, (round + kStages - 1) % kStages);
      cp_async_wait<kStages - 1>();  // every group but the kStages - 1 newest: this round's
      take_round(base, round % kStages);
    } else if (base != lo) {
      load_round(base);
    }
    float s[kKeys][G];
#pragma unroll
    for (int k = 0; k < kKeys; ++k) {
      float kf[kVec];
      unpack8(kr[k], kf, a.kv.k_scale);
#pragma unroll
      for (int g = 0; g < G; ++g) s[k][g] = score(kf, g);
    }
    if (!valid[0]) continue;  // the group has no key this round
    accumulate(s, vr, valid);
  }

  if (writer && threadIdx.x < kWarp) {
    // The new token, in the first warp: its groups all rotate the key (the shuffles need the whole
    // warp), group 0 stores k and v in the cache slot and takes the key into its softmax.
    float kf[kVec], vn[kVec];
    load_rotated(q_dim + kvh * D, kf, a.k_norm);
    const int64_t v_at = q_dim + kv_dim + kvh * D + c;
    load8(row + v_at, vn);
    if (a.bias) {
      float bv[kVec];
      load8(a.bias + v_at, bv);
#pragma unroll
      for (int e = 0; e < kVec; ++e) vn[e] += bv[e];
    }
    // Rounded to the cache's dtype and back: the new token enters this step's softmax exactly as later
    // steps will read it.
    Raw k_raw, v_raw;
    if constexpr (std::is_same_v<Kv, bf16>) {
      union {
        uint4 raw;
        __nv_bfloat162 e[kVec / 2];
      } kb, vb;
#pragma unroll
      for (int e = 0; e < kVec / 2; ++e) {
        kb.e[e] = __floats2bfloat162_rn(kf[2 * e], kf[2 * e + 1]);
        vb.e[e] = __floats2bfloat162_rn(vn[2 * e], vn[2 * e + 1]);
      }
      k_raw = kb.raw;
      v_raw = vb.raw;
    } else {
      k_raw = pack8_fp8(kf, a.kv.k_scale);
      v_raw = pack8_fp8(vn, a.kv.v_scale);
    }
    unpack8(k_raw, kf, a.kv.k_scale);
    float s[kKeys][G] = {};
#pragma unroll
    for (int g = 0; g < G; ++g) s[0][g] = score(kf, g);
    if (group == 0) {
      const int64_t slot = (static_cast<int64_t>(table[pos / page_size]) * page_size + pos % page_size) * kv_dim + kvh * D + c;
      *reinterpret_cast<Raw*>(static_cast<Kv*>(a.kv.keys) + slot) = k_raw;
      *reinterpret_cast<Raw*>(static_cast<Kv*>(a.kv.values) + slot) = v_raw;
      bool ok[kKeys] = {true};
      Raw values[kKeys] = {v_raw};
      accumulate(s, values, ok);
    }
  }

#pragma unroll
  for (int g = 0; g < G; ++g) {
    float4* dst = reinterpret_cast<float4*>(&s_acc[group][g][c]);
    dst[0] = make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
    dst[1] = make_float4(acc[g][4], acc[g][5], acc[g][6], acc[g][7]);
    if (c == 0) {
      s_m[group][g] = m[g];
      s_l[group][g] = l[g];
    }
  }
  __syncthreads();

  // Combining thread: head g of the group, dimensions [oc, oc + 8).
  const int g = threadIdx.x / kLanes;
  const int oc = (threadIdx.x % kLanes) * kVec;
  const int64_t h = static_cast<int64_t>(kvh) * G + g;
  float mx = -FLT_MAX, sum = 0.0f, o[kVec] = {};
  if (threadIdx.x < kOut) {
    for (int j = 0; j < kGroups; ++j) mx = fmaxf(mx, s_m[j][g]);
    for (int j = 0; j < kGroups; ++j) {
      const float lj = s_l[j][g];
      if (lj == 0.0f) continue;  // a group without keys
      const float w = __expf(s_m[j][g] - mx);
      sum += w * lj;
      const float* src = &s_acc[j][g][oc];
#pragma unroll
      for (int e = 0; e < kVec; ++e) o[e] += w * src[e];
    }
  }
  const int64_t out_at = (static_cast<int64_t>(t) * a.step.heads + h) * D + oc;
  if (splits == 1) {
    if (threadIdx.x < kOut) store8(a, out_at, o, 1.0f / sum);  // sum > 0: the block has the new token
    return;
  }

  if constexpr (kCluster) {
    // The head's blocks form one cluster along the splits (launch_for_group): each leaves its merged
    // partial in its own shared memory and the writer block reads them over distributed shared memory,
    // two cluster barriers instead of a global write, fence, arrival counter and L2 reads.
    namespace cg = cooperative_groups;
    const cg::cluster_group cluster = cg::this_cluster();
    if (threadIdx.x < kOut) {
      *reinterpret_cast<float4*>(&s_part[g * D + oc]) = make_float4(o[0], o[1], o[2], o[3]);
      *reinterpret_cast<float4*>(&s_part[g * D + oc + 4]) = make_float4(o[4], o[5], o[6], o[7]);
      if (oc == 0) {
        s_stat[g][0] = mx;
        s_stat[g][1] = sum;
      }
    }
    // Blocks past `splits` have exited: a cluster barrier waits for the threads that have not.
    cluster.sync();
    if (writer && threadIdx.x < kOut) {
      float ms[kMaxAttentionSplits], ls[kMaxAttentionSplits];
#pragma unroll
      for (int j = 0; j < kMaxAttentionSplits; ++j) {
        const float* stat = j < splits ? cluster.map_shared_rank(&s_stat[g][0], j) : nullptr;
        ms[j] = stat ? stat[0] : -FLT_MAX;
        ls[j] = stat ? stat[1] : 0.0f;
      }
      float M = -FLT_MAX;
#pragma unroll
      for (int j = 0; j < kMaxAttentionSplits; ++j) M = fmaxf(M, ms[j]);
      // Every block below `splits` has keys (the split arithmetic at the top), so each l > 0 and each m
      // is finite: no guard for an empty split, unlike the counter merge's.
      float L = 0.0f, O[kVec] = {};
#pragma unroll
      for (int j = 0; j < kMaxAttentionSplits; ++j) {
        if (j >= splits) break;
        const float w = __expf(ms[j] - M);
        L += ls[j] * w;
        const float4* part = reinterpret_cast<const float4*>(cluster.map_shared_rank(&s_part[g * D + oc], j));
        const float4 p0 = part[0], p1 = part[1];
        O[0] += p0.x * w, O[1] += p0.y * w, O[2] += p0.z * w, O[3] += p0.w * w;
        O[4] += p1.x * w, O[5] += p1.y * w, O[6] += p1.z * w, O[7] += p1.w * w;
      }
      store8(a, out_at, O, 1.0f / L);
    }
    // No block leaves while the writer may still read its shared memory.
    cluster.sync();
    return;
  }
  const int64_t part_stride = D + 2;
  float* parts = a.partials + (static_cast<int64_t>(t) * a.step.heads + h) * gridDim.z * part_stride;
  if (threadIdx.x < kOut) {
    float* part = parts + z * part_stride;
#pragma unroll
    for (int e = 0; e < kVec; ++e) part[oc + e] = o[e];
    if (oc == 0) {
      part[D] = mx;
      part[D + 1] = sum;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    // Cumulative: the fence after the barrier publishes the whole block's partial, so one thread
    // fences rather than every writer (the pattern of a cooperative grid sync).
    __threadfence();
    int* counter = a.counters + static_cast<int64_t>(t) * a.step.kv_heads + kvh;
    s_last = atomicAdd(counter, 1) == splits - 1;
    if (s_last) {
      *counter = 0;  // every block of this head has arrived: ready for the next launch
      __threadfence();
    }
  }
  __syncthreads();
  if (!s_last || threadIdx.x >= kOut) return;
  // Other blocks' writes, read through L2 (not L1). Every split's (m, l) first and then every
  // split's outputs, each set of loads in flight together: a loop of dependent reads here was a chain
  // of L2 round trips on the step's critical path.
  float ms[kMaxAttentionSplits], ls[kMaxAttentionSplits];
#pragma unroll
  for (int j = 0; j < kMaxAttentionSplits; ++j) {
    ms[j] = j < splits ? __ldcg(parts + j * part_stride + D) : -FLT_MAX;
    ls[j] = j < splits ? __ldcg(parts + j * part_stride + D + 1) : 0.0f;
  }
  float M = -FLT_MAX;
#pragma unroll
  for (int j = 0; j < kMaxAttentionSplits; ++j) M = ls[j] != 0.0f ? fmaxf(M, ms[j]) : M;
  // A split without keys wrote zeros and l = 0: its weight is 0 and its zeros add nothing.
  float L = 0.0f, O[kVec] = {};
#pragma unroll
  for (int j = 0; j < kMaxAttentionSplits; ++j) {
    if (j >= splits) break;
    const float w = ls[j] != 0.0f ? __expf(ms[j] - M) : 0.0f;
    L += ls[j] * w;
    const float* part = parts + j * part_stride + oc;
#pragma unroll
    for (int e = 0; e < kVec; ++e) O[e] += __ldcg(part + e) * w;
  }
  store8(a, out_at, O, 1.0f / L);
}

int multiprocessors() {
  static const int count = [] {
    int device = 0, n = 0;
    KILN_CUDA_CHECK(cudaGetDevice(&device));
    KILN_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device));
    return n;
  }();
  return count;
}

// The four-blocks-an-SM build of G = 4 where the grid is more than a wave of three blocks an SM
// (KILN_DECODE_ATTENTION_FOUR_PER_SM=0/1 forces one build, for measuring both).
bool four_per_sm(dim3 grid) {
  static const std::optional<bool> forced = env_setting("KILN_DECODE_ATTENTION_FOUR_PER_SM");
  if (forced) return *forced;
  return static_cast<int64_t>(grid.x) * grid.y * grid.z > 3 * static_cast<int64_t>(multiprocessors());
}

bool cluster_merge_enabled() {
  static const bool on = env_switch("KILN_CUDA_DECODE_CLUSTER", true);
  return on;
}

static_assert(kMaxAttentionSplits <= 16, "a head's splits form one cluster, and Hopper clusters hold at most 16 blocks");

// Whether a cluster of z blocks of `kernel` can be resident at all: past the portable 8 it depends on
// how many SMs a GPC offers this context (MIG, MPS limits), and a launch that cannot be placed fails.
// Asked once per kernel build and size (not a stream operation: legal while a decode graph is
// captured).
template <int D, int G, typename Kv, bool kFourPerSm, bool kPipe>
bool cluster_fits(unsigned z) {
  auto* kernel = decode_attention_kernel<D, G, Kv, kFourPerSm, kPipe, true>;
  static std::array<std::atomic<int8_t>, kMaxAttentionSplits + 1> known{};  // 0 not asked, 1 fits, -1 not
  int8_t fits = known[z].load(std::memory_order_relaxed);
  if (fits != 0) return fits > 0;
  static const bool opted_in = [&] {
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1),
               "decode_attention_kernel cluster size", __FILE__, __LINE__);
    return true;
  }();
  (void)opted_in;
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeClusterDimension;
  attribute.val.clusterDim.x = 1;
  attribute.val.clusterDim.y = 1;
  attribute.val.clusterDim.z = z;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(1, 1, z);
  config.blockDim = dim3(kThreads);
  config.attrs = &attribute;
  config.numAttrs = 1;
  // A failed query counts as "does not fit": the counter merge runs anywhere.
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess) {
    (void)cudaGetLastError();
    clusters = 0;
  }
  fits = clusters > 0 ? 1 : -1;
  known[z].store(fits, std::memory_order_relaxed);
  return fits > 0;
}

// A split launch runs each head's blocks as one thread-block cluster of `splits` blocks, where such a
// cluster can be placed; otherwise (and with KILN_CUDA_DECODE_CLUSTER=0) the counter merge.
template <int D, int G, typename Kv, bool kFourPerSm, bool kPipe = false>
void launch_one(const DecodeAttentionArgs& a, dim3 grid, cudaStream_t stream) {
  const char* what = "decode_attention_kernel";
  if constexpr (kPipe) {
    // Four blocks of ~43 KB static shared memory each need most of the SM's carveout: asked for once
    // per build (not a stream operation).
    static const bool carved = [] {
      for (auto* kernel : {decode_attention_kernel<D, G, Kv, kFourPerSm, kPipe, false>,
                           decode_attention_kernel<D, G, Kv, kFourPerSm, kPipe, true>}) {
        check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                        cudaSharedmemCarveoutMaxShared),
                   "decode_attention_kernel shared memory carveout", __FILE__, __LINE__);
      }
      return true;
    }();
    (void)carved;
  }
  if (grid.z == 1 || !cluster_merge_enabled() || !cluster_fits<D, G, Kv, kFourPerSm, kPipe>(grid.z)) {
    launch_kernel(what, decode_attention_kernel<D, G, Kv, kFourPerSm, kPipe, false>, grid, dim3(kThreads), stream, a);
    return;
  }
  launch_kernel_cluster(what, decode_attention_kernel<D, G, Kv, kFourPerSm, kPipe, true>, grid, dim3(kThreads),
                        dim3(1, 1, grid.z), stream, a);
}

bool pipeline_enabled() {
  static const bool on = env_switch("KILN_DECODE_ATTENTION_PIPELINE", true);
  return on;
}

template <int D, typename Kv>
void launch_for_group(const DecodeAttentionArgs& a, dim3 grid, cudaStream_t stream) {
  switch (a.step.heads / a.step.kv_heads) {
    case 1: launch_one<D, 1, Kv, false>(a, grid, stream); break;
    case 2: launch_one<D, 2, Kv, false>(a, grid, stream); break;
    case 4:
      if (four_per_sm(grid) && pipeline_enabled()) launch_one<D, 4, Kv, true, true>(a, grid, stream);
      else if (four_per_sm(grid)) launch_one<D, 4, Kv, true>(a, grid, stream);
      else launch_one<D, 4, Kv, false>(a, grid, stream);
      break;
    case 8: launch_one<D, 8, Kv, false>(a, grid, stream); break;
    default: throw Error("CUDA decode attention: GQA group of " + std::to_string(a.step.heads / a.step.kv_heads));
  }
}

template <typename Kv>
void launch_for_dim(const DecodeAttentionArgs& a, dim3 grid, cudaStream_t stream) {
  switch (a.step.head_dim) {
    case 32: launch_for_group<32, Kv>(a, grid, stream); break;
    case 64: launch_for_group<64, Kv>(a, grid, stream); break;
    default: launch_for_group<128, Kv>(a, grid, stream); break;
  }
}

}  // namespace

bool decode_attention_supports(int64_t heads, int64_t kv_heads, int64_t head_dim) {
  if (kv_heads < 1 || heads % kv_heads != 0) return false;
  const int64_t group = heads / kv_heads;
  return (head_dim == 32 || head_dim == 64 || head_dim == 128) &&
         (group == 1 || group == 2 || group == 4 || group == 8);
}

void decode_attention(const DecodeAttentionArgs& a, cudaStream_t stream) {
  if (a.step.tokens == 0) return;
  if (!decode_attention_supports(a.step.heads, a.step.kv_heads, a.step.head_dim)) {
    throw Error("CUDA decode attention: " + std::to_string(a.step.heads) + "/" + std::to_string(a.step.kv_heads) +
                " heads of dim " + std::to_string(a.step.head_dim) + " are not supported");
  }
  if (a.splits < 1 || a.splits > kMaxAttentionSplits || (a.splits > 1 && (!a.partials || !a.counters))) {
    throw Error("CUDA decode attention: " + std::to_string(a.splits) + " splits (1.." +
                std::to_string(kMaxAttentionSplits) + ", more than 1 with partials and counters)");
  }
  if (!a.q_norm != !a.k_norm) throw Error("CUDA decode attention: QK norm needs both the q and the k weights");
  if (a.kv.dtype != DType::BF16 && a.kv.dtype != DType::F8E4M3) {
    throw Error(std::string("CUDA decode attention: KV cache dtype ") + dtype_name(a.kv.dtype) +
                " is not supported (bf16, f8e4m3)");
  }
  const dim3 grid(static_cast<unsigned>(a.step.tokens), static_cast<unsigned>(a.step.kv_heads), static_cast<unsigned>(a.splits));
  if (a.kv.dtype == DType::F8E4M3) launch_for_dim<fp8>(a, grid, stream);
  else launch_for_dim<bf16>(a, grid, stream);
}

}  // namespace kiln::cuda
