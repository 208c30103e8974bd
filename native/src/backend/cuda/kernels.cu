#include <algorithm>
#include <cfloat>

#include "backend/cuda/attention_tile.cuh"
#include "backend/cuda/check.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/launch.cuh"

namespace kiln::cuda {

namespace {

constexpr int kWarp = 32;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

__device__ __forceinline__ void store(bf16* p, float v, float) { *p = __float2bfloat16(v); }
// `inv_scale`: 1 / the GEMM's input scale; the conversion saturates to ±448 as the CPU's does.
__device__ __forceinline__ void store(fp8* p, float v, float inv_scale) { *p = fp8(v * inv_scale); }

unsigned blocks_for(int64_t count, int threads) {
  const int64_t blocks = (count + threads - 1) / threads;
  return static_cast<unsigned>(blocks < 65535 * 16 ? blocks : 65535 * 16);
}

// One block per token. The row is cold in DRAM when a decode step starts, and nothing overlaps it,
// so each thread issues all its 16-byte loads before its first store: a loop of 2-byte loads and
// stores was a chain of round trips (H200, one 4096-wide row: ~9 us).
constexpr int kEmbedChunksPerThread = 4;

__global__ void embed_rows_kernel(const bf16* table, const int32_t* tokens, int64_t hidden, float* h) {
  wait_for_producer();
  let_consumer_start();
  const int64_t t = blockIdx.x;
  const bf16* row = table + static_cast<int64_t>(tokens[t]) * hidden;
  float* out = h + t * hidden;
  // The 16-byte form needs 16-byte rows (hidden % 8) at 16-byte bases (cudaMalloc'd in the model; a
  // caller of this launcher may pass any pointer).
  if (hidden % 8 != 0 || (reinterpret_cast<uintptr_t>(table) | reinterpret_cast<uintptr_t>(h)) % 16 != 0) {
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) out[i] = __bfloat162float(row[i]);
    return;
  }
  const auto* src = reinterpret_cast<const uint4*>(row);
  auto* dst = reinterpret_cast<float4*>(out);
  const int64_t chunks = hidden / 8;
  for (int64_t base = threadIdx.x; base < chunks; base += kEmbedChunksPerThread * blockDim.x) {
    uint4 v[kEmbedChunksPerThread];
#pragma unroll
    for (int u = 0; u < kEmbedChunksPerThread; ++u) {
      const int64_t c = base + u * blockDim.x;
      if (c < chunks) v[u] = src[c];
    }
#pragma unroll
    for (int u = 0; u < kEmbedChunksPerThread; ++u) {
      const int64_t c = base + u * blockDim.x;
      if (c >= chunks) break;
      const auto* pairs = reinterpret_cast<const __nv_bfloat162*>(&v[u]);
      const float2 a = __bfloat1622float2(pairs[0]), b = __bfloat1622float2(pairs[1]);
      const float2 e = __bfloat1622float2(pairs[2]), f = __bfloat1622float2(pairs[3]);
      dst[2 * c] = make_float4(a.x, a.y, b.x, b.y);
      dst[2 * c + 1] = make_float4(e.x, e.y, f.x, f.y);
    }
  }
}

// Rows of at most kNormVecThreads * 4 elements (hidden % 4 == 0): one thread per 4 elements, the row
// and gamma loaded once into registers (both loads in flight together), one reduction, then scaled
// and stored from registers. The decode norm is one row, so its cost is this chain's latency.
constexpr int kNormVecThreads = 1024;

template <typename Out>
__global__ void rms_norm_vec_kernel(const float* h, const int32_t* row_index, int64_t hidden, const float* gamma,
                                    float eps, float inv_scale, Out* y) {
  __shared__ float partial[kNormVecThreads / kWarp];
  wait_for_producer();
  let_consumer_start();
  const int64_t r = blockIdx.x;
  const int64_t i = threadIdx.x;
  const bool active = i < hidden / 4;
  const float4* x = reinterpret_cast<const float4*>(h + (row_index ? static_cast<int64_t>(row_index[r]) : r) * hidden);
  float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  float4 g = make_float4(1.0f, 1.0f, 1.0f, 1.0f);
  if (active) {
    v = x[i];
    if (gamma) g = reinterpret_cast<const float4*>(gamma)[i];
  }
  float squares = warp_sum(v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w);
  const int warp = threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (lane == 0) partial[warp] = squares;
  __syncthreads();
  float total = lane < static_cast<int>(blockDim.x / kWarp) ? partial[lane] : 0.0f;
  total = warp_sum(total);
  if (!active) return;
  const float inv = rsqrtf(total / static_cast<float>(hidden) + eps);
  // The same products as rms_norm_kernel (gamma · (x · inv)), so both give the same values.
  Out* out = y + r * hidden + 4 * i;
  store(out, g.x * (v.x * inv), inv_scale);
  store(out + 1, g.y * (v.y * inv), inv_scale);
  store(out + 2, g.z * (v.z * inv), inv_scale);
  store(out + 3, g.w * (v.w * inv), inv_scale);
}

// One block per row; the row is read twice (sum of squares, then scale), the second time from cache.
template <typename Out>
__global__ void rms_norm_kernel(const float* h, const int32_t* row_index, int64_t hidden, const float* gamma, float eps,
                                float inv_scale, Out* y) {
  __shared__ float partial[32];
  wait_for_producer();
  let_consumer_start();
  const int64_t r = blockIdx.x;
  const float* x = h + (row_index ? static_cast<int64_t>(row_index[r]) : r) * hidden;
  float squares = 0.0f;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) squares += x[i] * x[i];
  squares = warp_sum(squares);
  const int warp = threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (lane == 0) partial[warp] = squares;
  __syncthreads();
  if (warp == 0) {
    float total = lane < static_cast<int>(blockDim.x / kWarp) ? partial[lane] : 0.0f;
    total = warp_sum(total);
    if (lane == 0) partial[0] = total;
  }
  __syncthreads();
  const float inv = rsqrtf(partial[0] / static_cast<float>(hidden) + eps);
  Out* out = y + r * hidden;
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float normed = x[i] * inv;
    store(out + i, gamma ? gamma[i] * normed : normed, inv_scale);
  }
}

// The sum of v over the block's threads (one head: head_dim / 2 of them, 16 to 64), in a fixed order.
__device__ __forceinline__ float head_sum(float v) {
  __shared__ float partial[2];
  const int threads = static_cast<int>(blockDim.x);
  const unsigned mask = threads >= kWarp ? 0xffffffffu : (1u << threads) - 1;
  for (int offset = min(kWarp, threads) / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(mask, v, offset);
  if (threadIdx.x % kWarp == 0) partial[threadIdx.x / kWarp] = v;
  __syncthreads();
  return threads > kWarp ? partial[0] + partial[1] : partial[0];
}

// One block per (token, head) of q and k: each thread rotates one (i, i + head_dim/2) pair; the
// blocks of k heads also store that head's k and v rows in the token's cache slot (Kv: the cache's
// element type; store() quantizes e4m3 with 1 / the cache scale, bf16 ignores it).
template <typename Kv>
__global__ void rope_kv_kernel(RopeKvArgs a) {
  wait_for_producer();
  let_consumer_start();
  const int64_t t = blockIdx.x;
  const int64_t head = blockIdx.y;
  const int64_t D = a.step.head_dim;
  const int64_t half = D / 2;
  const int64_t q_dim = a.step.heads * D;
  const int64_t kv_dim = a.step.kv_heads * D;
  float* row = a.qkv + t * (q_dim + 2 * kv_dim);
  const int64_t pos = a.step.token_position[t];
  const int64_t i = threadIdx.x;
  const int64_t at = head * D + i;  // q heads first, then k heads, as the fused qkv rows are laid out
  float x0 = row[at];
  float x1 = row[at + half];
  if (a.bias) {
    x0 += a.bias[at];
    x1 += a.bias[at + half];
  }
  const float* gamma = head < a.step.heads ? a.q_norm : a.k_norm;
  if (gamma) {  // the same for the whole block
    const float inv = rsqrtf(head_sum(x0 * x0 + x1 * x1) / static_cast<float>(D) + a.norm_eps);
    x0 = gamma[i] * (x0 * inv);
    x1 = gamma[i + half] * (x1 * inv);
  }
  const float c = a.cos[pos * half + i];
  const float s = a.sin[pos * half + i];
  const float r0 = x0 * c - x1 * s;
  const float r1 = x1 * c + x0 * s;
  if (head < a.step.heads) {
    row[at] = r0;
    row[at + half] = r1;
    return;
  }
  const int32_t* table = a.step.block_tables + static_cast<int64_t>(a.step.token_sequence[t]) * a.step.table_stride;
  // 32-bit division: positions and page sizes are small, and a 64-bit divide costs dozens of instructions.
  const int p32 = static_cast<int>(pos);
  const int page_size = static_cast<int>(a.step.page_size);
  const int64_t slot = (static_cast<int64_t>(table[p32 / page_size]) * a.step.page_size + p32 % page_size) * kv_dim;
  const int64_t k_head = (head - a.step.heads) * D;
  store(static_cast<Kv*>(a.kv.keys) + slot + k_head + i, r0, 1.0f / a.kv.k_scale);
  store(static_cast<Kv*>(a.kv.keys) + slot + k_head + i + half, r1, 1.0f / a.kv.k_scale);
  for (int64_t j = k_head + i; j < k_head + D; j += half) {
    float v = row[q_dim + kv_dim + j];
    if (a.bias) v += a.bias[q_dim + kv_dim + j];
    store(static_cast<Kv*>(a.kv.values) + slot + j, v, 1.0f / a.kv.v_scale);
  }
}

// Attention tile geometry: 4 warps, each owning up to 4 query rows (row r belongs to warp r % 4), a
// row being one (token, query head) pair; 32 keys per step, one key per lane for the scores and one
// output dimension stripe per lane for P·V.
constexpr int kAttnWarps = 4;
constexpr int kAttnRowsPerWarp = 4;
constexpr int kAttnRows = kAttnWarps * kAttnRowsPerWarp;
constexpr int kAttnKeys = kWarp;

// 16 cached bytes as fp32: 8 bf16 (the scale does not apply), or 16 e4m3 times the cache scale.
__device__ __forceinline__ void unpack_kv(const uint4& raw, float (&v)[8], float) {
  const auto* p = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const float2 f = __bfloat1622float2(p[e]);
    v[2 * e] = f.x;
    v[2 * e + 1] = f.y;
  }
}
__device__ __forceinline__ void unpack_kv(const uint4& raw, float (&v)[16], float scale) {
  const auto* p = reinterpret_cast<const __nv_fp8x2_e4m3*>(&raw);
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const float2 f = static_cast<float2>(p[e]);
    v[2 * e] = f.x * scale;
    v[2 * e + 1] = f.y * scale;
  }
}

template <int D, typename Kv>
__global__ __launch_bounds__(kAttnWarps* kWarp) void attention_kernel(AttentionArgs a, int heads_per_block) {
  constexpr int kLaneDims = D / kWarp;
  __shared__ float q_s[kAttnRows][D];
  __shared__ float k_s[kAttnKeys][D + 1];  // +1: lanes read different rows of one column, no bank conflicts
  __shared__ float v_s[kAttnKeys][D];
  wait_for_producer();
  let_consumer_start();

  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const TileHeads tile = tile_heads(a, heads_per_block);
  const int64_t first = tile.first;
  const int64_t count = tile.count;
  const int64_t kv_head = tile.kv_head;
  const int64_t head0 = tile.head0;
  // Row, position and page arithmetic below divides in 32 bits (all small).
  const int nh = tile.nh;
  const int rows = static_cast<int>(count) * nh;
  const int page_size = static_cast<int>(a.step.page_size);
  const int64_t kv_dim = a.step.kv_heads * D;
  const int32_t* table = a.step.block_tables + static_cast<int64_t>(a.step.token_sequence[first]) * a.step.table_stride;
  const int64_t p0 = a.step.token_position[first];
  const int64_t last = p0 + count - 1;
  const int64_t first_key = a.window > 0 ? max(int64_t{0}, p0 - a.window + 1) : 0;
  // This block's share of the keys: whole 32-key steps, split `splits` ways.
  const int64_t steps = (last - first_key + kAttnKeys) / kAttnKeys;
  const int64_t steps_per_split = (steps + gridDim.z - 1) / gridDim.z;
  const int64_t lo = first_key + static_cast<int64_t>(blockIdx.z) * steps_per_split * kAttnKeys;
  const int64_t hi = min(last, lo + steps_per_split * kAttnKeys - 1);

  for (int idx = threadIdx.x; idx < rows * D; idx += blockDim.x) {
    const int r = idx / D;
    const int d = idx % D;
    const int64_t t = first + r / nh;
    const int64_t h = head0 + r % nh;
    q_s[r][d] = a.q[t * a.q_stride + h * D + d] * a.scale;
  }

  float m[kAttnRowsPerWarp];
  float l[kAttnRowsPerWarp];
  float acc[kAttnRowsPerWarp][kLaneDims];
#pragma unroll
  for (int rr = 0; rr < kAttnRowsPerWarp; ++rr) {
    m[rr] = -FLT_MAX;
    l[rr] = 0.0f;
#pragma unroll
    for (int i = 0; i < kLaneDims; ++i) acc[rr][i] = 0.0f;
  }

  constexpr int kVec = 16 / sizeof(Kv);  // elements per 16-byte load
  for (int64_t kb = lo; kb <= hi; kb += kAttnKeys) {
    __syncthreads();  // q_s written (first pass) / previous tile consumed
    for (int idx = threadIdx.x; idx < kAttnKeys * (D / kVec); idx += blockDim.x) {
      const int j = idx / (D / kVec);
      const int c = (idx % (D / kVec)) * kVec;
      const int64_t kp = kb + j;
      const int kp32 = static_cast<int>(kp);
      float kf[kVec];
      float vf[kVec];
      if (kp <= hi) {
        const int64_t at = (static_cast<int64_t>(table[kp32 / page_size]) * a.step.page_size + kp32 % page_size) * kv_dim +
                           kv_head * D + c;
        const uint4 kraw = *reinterpret_cast<const uint4*>(static_cast<const Kv*>(a.kv.keys) + at);
        const uint4 vraw = *reinterpret_cast<const uint4*>(static_cast<const Kv*>(a.kv.values) + at);
        unpack_kv(kraw, kf, a.kv.k_scale);
        unpack_kv(vraw, vf, a.kv.v_scale);
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) kf[e] = vf[e] = 0.0f;  // zeros: masked keys must not bring NaN into P·V
      }
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        k_s[j][c + e] = kf[e];
        v_s[j][c + e] = vf[e];
      }
    }
    __syncthreads();

#pragma unroll
    for (int rr = 0; rr < kAttnRowsPerWarp; ++rr) {
      const int r = rr * kAttnWarps + warp;
      if (r >= rows) continue;  // warp-uniform
      const int64_t pos = p0 + r / nh;
      const int64_t kp = kb + lane;
      const bool valid = kp <= pos && kp <= hi && (a.window == 0 || kp > pos - a.window);
      float s = 0.0f;
#pragma unroll 16
      for (int d = 0; d < D; ++d) s += q_s[r][d] * k_s[lane][d];
      s = valid ? s : -FLT_MAX;
      const float tile_max = warp_max(s);
      if (tile_max == -FLT_MAX) continue;  // every key of this step is masked for this row
      const float m_new = fmaxf(m[rr], tile_max);
      const float correction = __expf(m[rr] - m_new);
      const float p = valid ? __expf(s - m_new) : 0.0f;
      l[rr] = l[rr] * correction + warp_sum(p);
#pragma unroll
      for (int i = 0; i < kLaneDims; ++i) acc[rr][i] *= correction;
#pragma unroll 8
      for (int j = 0; j < kAttnKeys; ++j) {
        const float pj = __shfl_sync(0xffffffffu, p, j);
#pragma unroll
        for (int i = 0; i < kLaneDims; ++i) acc[rr][i] += pj * v_s[j][lane + i * kWarp];
      }
      m[rr] = m_new;
    }
  }

#pragma unroll
  for (int rr = 0; rr < kAttnRowsPerWarp; ++rr) {
    const int r = rr * kAttnWarps + warp;
    if (r >= rows) continue;
    const int64_t t = first + r / nh;
    const int64_t h = head0 + r % nh;
    if (gridDim.z == 1) {
      const float inv = 1.0f / l[rr];  // l > 0: every query sees at least its own position
      const int64_t at = t * a.step.heads * D + h * D;
      if (a.out_fp8) {
        const float inv_scale = 1.0f / a.out_scale;
#pragma unroll
        for (int i = 0; i < kLaneDims; ++i) store(a.out_fp8 + at + lane + i * kWarp, acc[rr][i] * inv, inv_scale);
      } else {
#pragma unroll
        for (int i = 0; i < kLaneDims; ++i) store(a.out + at + lane + i * kWarp, acc[rr][i] * inv, 1.0f);
      }
    } else {
      // Written even for an empty share (l = 0): the merge reads every split.
      float* part = a.partials + ((t * a.step.heads + h) * gridDim.z + blockIdx.z) * (D + 2);
#pragma unroll
      for (int i = 0; i < kLaneDims; ++i) part[lane + i * kWarp] = acc[rr][i];
      if (lane == 0) {
        part[D] = m[rr];
        part[D + 1] = l[rr];
      }
    }
  }
}

// One block per (token, head), one thread per output dimension: rescales each split's partial
// output to the common maximum and normalises by the summed softmax denominators.
__global__ void merge_splits_kernel(const float* partials, int64_t heads, int64_t head_dim, int64_t splits, bf16* out,
                                    fp8* out_fp8, float out_scale) {
  wait_for_producer();
  let_consumer_start();
  const int64_t row = blockIdx.x;  // token * heads + head
  const float* part = partials + row * splits * (head_dim + 2);
  float m = -FLT_MAX;
  for (int64_t s = 0; s < splits; ++s) m = fmaxf(m, part[s * (head_dim + 2) + head_dim]);
  float num = 0.0f;
  float den = 0.0f;
  const int64_t d = threadIdx.x;
  for (int64_t s = 0; s < splits; ++s) {
    const float* p = part + s * (head_dim + 2);
    const float l = p[head_dim + 1];
    if (l == 0.0f) continue;  // an empty share
    const float w = __expf(p[head_dim] - m);
    num += w * p[d];
    den += w * l;
  }
  if (out_fp8) store(out_fp8 + row * head_dim + d, num / den, 1.0f / out_scale);
  else store(out + row * head_dim + d, num / den, 1.0f);
}

// Grid: x over pairs of the intermediate dimension, y over rows (no per-element division). A thread
// takes two outputs from one float4 of interleaved (gate, up) pairs; an odd last output goes alone.
template <typename Out>
__global__ void silu_mul_kernel(const float* gate_up, int64_t, int64_t inter, float inv_scale, Out* out) {
  wait_for_producer();
  let_consumer_start();
  const int64_t r = blockIdx.y;
  const float* row = gate_up + r * 2 * inter;
  const auto silu_mul_at = [&](int64_t i, float g, float u) {
    store(out + r * inter + i, g / (1.0f + __expf(-g)) * u, inv_scale);
  };
  const int64_t pairs = inter / 2;
  for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < pairs;
       j += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float4 v;
    if (inter % 2 == 0) {
      v = reinterpret_cast<const float4*>(row)[j];  // rows start 16-byte aligned when inter is even
    } else {
      v = make_float4(row[4 * j], row[4 * j + 1], row[4 * j + 2], row[4 * j + 3]);
    }
    silu_mul_at(2 * j, v.x, v.y);
    silu_mul_at(2 * j + 1, v.z, v.w);
  }
  if (inter % 2 == 1 && blockIdx.x == 0 && threadIdx.x == 0) {
    silu_mul_at(inter - 1, row[2 * inter - 2], row[2 * inter - 1]);
  }
}

__device__ __forceinline__ unsigned long long argmax_key(float v, int64_t i) {
  const uint32_t bits = __float_as_uint(v);
  const uint32_t ordered = (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;  // unsigned order = float order
  return (static_cast<unsigned long long>(ordered) << 32) | (0xffffffffu - static_cast<uint32_t>(i));
}

constexpr int kArgmaxPerThread = 8;

__global__ void argmax_kernel(const float* logits, int64_t vocab, unsigned long long* keys) {
  wait_for_producer();
  let_consumer_start();
  const float* row = logits + blockIdx.y * vocab;
  unsigned long long best = 0;
  const int64_t begin = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * kArgmaxPerThread;
#pragma unroll
  for (int e = 0; e < kArgmaxPerThread; ++e) {
    const int64_t i = begin + e;
    if (i < vocab) best = max(best, argmax_key(row[i], i));
  }
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) best = max(best, __shfl_xor_sync(0xffffffffu, best, offset));
  if (threadIdx.x % kWarp == 0 && best) atomicMax(keys + blockIdx.y, best);
}

}  // namespace

void embed_rows(const bf16* table, const int32_t* tokens, int64_t n, int64_t hidden, float* h, cudaStream_t stream) {
  if (n == 0) return;
  launch_kernel("embed_rows_kernel", embed_rows_kernel, dim3(static_cast<unsigned>(n)), dim3(256), stream, table, tokens,
                hidden, h);
}

template <typename Out>
void rms_norm(const float* h, const int32_t* row_index, int64_t rows, int64_t hidden, const float* gamma, float eps,
              float inv_scale, Out* y, cudaStream_t stream) {
  if (rows == 0) return;
  if (hidden % 4 == 0 && hidden <= 4 * kNormVecThreads) {
    const unsigned threads = static_cast<unsigned>((hidden / 4 + kWarp - 1) / kWarp * kWarp);
    launch_kernel("rms_norm_vec_kernel", rms_norm_vec_kernel<Out>, dim3(static_cast<unsigned>(rows)), dim3(threads),
                  stream, h, row_index, hidden, gamma, eps, inv_scale, y);
    return;
  }
  const unsigned threads = hidden >= 4096 ? 1024 : 256;
  launch_kernel("rms_norm_kernel", rms_norm_kernel<Out>, dim3(static_cast<unsigned>(rows)), dim3(threads), stream, h,
                row_index, hidden, gamma, eps, inv_scale, y);
}

void rms_norm_to_bf16(const float* h, const int32_t* row_index, int64_t rows, int64_t hidden, const float* gamma,
                      float eps, bf16* y, cudaStream_t stream) {
  rms_norm(h, row_index, rows, hidden, gamma, eps, 1.0f, y, stream);
}

void rms_norm_to_fp8(const float* h, const int32_t* row_index, int64_t rows, int64_t hidden, const float* gamma,
                     float eps, float scale, fp8* y, cudaStream_t stream) {
  rms_norm(h, row_index, rows, hidden, gamma, eps, 1.0f / scale, y, stream);
}

namespace {

void check_kv_dtype(const KvCacheArgs& kv, const char* what) {
  if (kv.dtype != DType::BF16 && kv.dtype != DType::F8E4M3) {
    throw Error(std::string(what) + ": KV cache dtype " + dtype_name(kv.dtype) + " is not supported (bf16, f8e4m3)");
  }
}

template <typename Kv>
void launch_attention(const AttentionArgs& a, dim3 grid, int heads_per_block, cudaStream_t stream) {
  const dim3 threads(kAttnWarps * kWarp);
  switch (a.step.head_dim) {
    case 32: launch_kernel("attention_kernel", attention_kernel<32, Kv>, grid, threads, stream, a, heads_per_block); break;
    case 64: launch_kernel("attention_kernel", attention_kernel<64, Kv>, grid, threads, stream, a, heads_per_block); break;
    case 128: launch_kernel("attention_kernel", attention_kernel<128, Kv>, grid, threads, stream, a, heads_per_block); break;
    default: throw Error("CUDA attention: head_dim " + std::to_string(a.step.head_dim) + " is not supported (32, 64, 128)");
  }
}

}  // namespace

void rope_and_write_kv(const RopeKvArgs& args, cudaStream_t stream) {
  if (args.step.tokens == 0) return;
  check_kv_dtype(args.kv, "CUDA RoPE");
  if (!args.q_norm != !args.k_norm) throw Error("CUDA RoPE: QK norm needs both the q and the k weights");
  const dim3 grid(static_cast<unsigned>(args.step.tokens), static_cast<unsigned>(args.step.heads + args.step.kv_heads));
  const dim3 threads(static_cast<unsigned>(args.step.head_dim / 2));
  if (args.kv.dtype == DType::F8E4M3) launch_kernel("rope_kv_kernel", rope_kv_kernel<fp8>, grid, threads, stream, args);
  else launch_kernel("rope_kv_kernel", rope_kv_kernel<bf16>, grid, threads, stream, args);
}

int64_t attention_tile_tokens(int64_t heads, int64_t kv_heads) {
  const int64_t per_block = std::min<int64_t>(heads / kv_heads, kAttnRows);
  return std::max<int64_t>(1, kAttnRows / per_block);
}

int64_t attention_splits(int64_t tiles, int64_t heads, int64_t kv_heads, int multiprocessors) {
  const int64_t group = heads / kv_heads;
  const int64_t blocks = tiles * kv_heads * ((group + kAttnRows - 1) / kAttnRows);
  const int64_t wanted = (2 * static_cast<int64_t>(multiprocessors) + blocks - 1) / blocks;
  return std::clamp<int64_t>(wanted, 1, kMaxAttentionSplits);
}

bool attention_supports_head_dim(int64_t head_dim) { return head_dim == 32 || head_dim == 64 || head_dim == 128; }

void paged_attention(const AttentionArgs& a, cudaStream_t stream) {
  if (a.num_tiles == 0) return;
  const int64_t group = a.step.heads / a.step.kv_heads;
  const int heads_per_block = static_cast<int>(std::min<int64_t>(group, kAttnRows));
  if (a.splits < 1 || a.splits > kMaxAttentionSplits || (a.splits > 1 && !a.partials)) {
    throw Error("CUDA attention: " + std::to_string(a.splits) + " splits (1.." + std::to_string(kMaxAttentionSplits) +
                ", more than 1 with a partials buffer)");
  }
  const int64_t head_chunks = (group + heads_per_block - 1) / heads_per_block;
  const dim3 grid(static_cast<unsigned>(a.num_tiles), static_cast<unsigned>(a.step.kv_heads * head_chunks),
                  static_cast<unsigned>(a.splits));
  check_kv_dtype(a.kv, "CUDA attention");
  if (a.kv.dtype == DType::F8E4M3) launch_attention<fp8>(a, grid, heads_per_block, stream);
  else launch_attention<bf16>(a, grid, heads_per_block, stream);
  if (a.splits > 1) {
    launch_kernel("merge_splits_kernel", merge_splits_kernel, dim3(static_cast<unsigned>(a.step.tokens * a.step.heads)),
                  dim3(static_cast<unsigned>(a.step.head_dim)), stream, a.partials, a.step.heads, a.step.head_dim, a.splits, a.out,
                  a.out_fp8, a.out_scale);
  }
}

// One launch per 65535 rows (the grid's y limit).
template <typename Out>
void silu_mul(const float* gate_up, int64_t rows, int64_t inter, float inv_scale, Out* out, cudaStream_t stream) {
  constexpr int64_t kMaxRows = 65535;
  for (int64_t r0 = 0; r0 < rows; r0 += kMaxRows) {
    const int64_t n = std::min(kMaxRows, rows - r0);
    const dim3 grid(blocks_for(std::max<int64_t>(1, inter / 2), 256), static_cast<unsigned>(n));
    launch_kernel("silu_mul_kernel", silu_mul_kernel<Out>, grid, dim3(256), stream, gate_up + r0 * 2 * inter, n, inter,
                  inv_scale, out + r0 * inter);
  }
}

void silu_mul_to_bf16(const float* gate_up, int64_t rows, int64_t inter, bf16* out, cudaStream_t stream) {
  silu_mul(gate_up, rows, inter, 1.0f, out, stream);
}

void silu_mul_to_fp8(const float* gate_up, int64_t rows, int64_t inter, float scale, fp8* out, cudaStream_t stream) {
  silu_mul(gate_up, rows, inter, 1.0f / scale, out, stream);
}

void argmax_rows(const float* logits, int64_t rows, int64_t vocab, unsigned long long* keys, cudaStream_t stream) {
  if (rows == 0) return;
  KILN_CUDA_CHECK(cudaMemsetAsync(keys, 0, static_cast<size_t>(rows) * sizeof(unsigned long long), stream));
  const int threads = 256;
  const dim3 grid(static_cast<unsigned>((vocab + threads * kArgmaxPerThread - 1) / (threads * kArgmaxPerThread)),
                  static_cast<unsigned>(rows));
  launch_kernel("argmax_kernel", argmax_kernel, grid, dim3(threads), stream, logits, vocab, keys);
}

}  // namespace kiln::cuda
