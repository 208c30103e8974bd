#include "backend/cuda/prefill_attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "backend/cuda/attention_tile.cuh"
#include "backend/cuda/check.h"
#include "backend/cuda/launch.cuh"

namespace kiln::cuda {

namespace {

// Block geometry: 4 warps, each owning 16 query rows (one m16 row block of the MMA); 64 keys per
// step. Row r of a block is token r / nh, head r % nh of its tile, as in paged_attention.
constexpr int kWarp = 32;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * kWarp;
constexpr int kRowsPerWarp = 16;
constexpr int kRows = kWarps * kRowsPerWarp;
constexpr int kKeys = 64;
// Shared rows are padded by 16 bytes: the 8 rows one ldmatrix reads then start 4 banks apart and
// cover all 32 banks, where an unpadded 128- or 256-byte pitch puts all 8 on the same banks.
constexpr int kPad = 8;

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 bf16 matrices from shared memory; lane l gives the address of row l % 8 of matrix l / 8.
// Without .trans, lane t receives row t / 4, columns 2 (t % 4) and +1 of each; with .trans the same
// of the transposed matrix (column t / 4, rows 2 (t % 4) and +1).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(shared_address(p)));
}

// c += a · b for a 16x16 row-major A (a[0]: rows g, cols 2q..2q+1; a[1]: rows g + 8; a[2], a[3]: the
// same at cols + 8, with g = lane / 4, q = lane % 4), a 16x8 column-major B (b0: rows 2q..2q+1 of
// column g; b1: rows + 8) and the 16x8 fp32 C (c[0], c[1]: row g, cols 2q, 2q + 1; c[2], c[3]: row g + 8).
__device__ __forceinline__ void mma_bf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two values as a bf16x2 register: `lo` in the low half, the element of the lower index in a fragment.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// 16 cached bytes as bf16 in shared memory: bf16 copied, e4m3 (16 elements) widened exactly.
__device__ __forceinline__ void put_row_chunk(bf16* dst, const uint4& raw, bf16) {
  *reinterpret_cast<uint4*>(dst) = raw;
}
__device__ __forceinline__ void put_row_chunk(bf16* dst, const uint4& raw, fp8) {
  const auto* p = reinterpret_cast<const __nv_fp8x2_e4m3*>(&raw);
  uint32_t w[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const float2 f = static_cast<float2>(p[e]);
    w[e] = pack_bf16(f.x, f.y);
  }
  reinterpret_cast<uint4*>(dst)[0] = make_uint4(w[0], w[1], w[2], w[3]);
  reinterpret_cast<uint4*>(dst)[1] = make_uint4(w[4], w[5], w[6], w[7]);
}

// Keys and values kb .. kb + kKeys - 1 of one KV head into k_s / v_s ([kKeys][D + kPad] bf16),
// positions past `last` as zeros (their slots may hold anything, and a NaN there times a zero
// weight would still reach P·V). All of a thread's loads are issued before its first store.
template <int D, typename Kv>
__device__ __forceinline__ void stage_keys(const AttentionArgs& a, const int32_t* table, int kb, int last,
                                           int64_t head_offset, bf16* k_s, bf16* v_s) {
  constexpr int kStride = D + kPad;
  constexpr int kVec = 16 / sizeof(Kv);       // elements per 16-byte load
  constexpr int kChunks = D / kVec;           // loads per row
  constexpr int kPerThread = kKeys * kChunks / kThreads;
  static_assert(kKeys * kChunks % kThreads == 0, "whole loads per thread");
  const int page_size = static_cast<int>(a.step.page_size);
  const int64_t kv_dim = a.step.kv_heads * D;
  const Kv* keys = static_cast<const Kv*>(a.kv.keys);
  const Kv* values = static_cast<const Kv*>(a.kv.values);
  uint4 kraw[kPerThread];
  uint4 vraw[kPerThread];
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int idx = threadIdx.x + i * kThreads;
    const int kp = kb + idx / kChunks;
    kraw[i] = vraw[i] = make_uint4(0, 0, 0, 0);
    if (kp <= last) {
      const int64_t at = (static_cast<int64_t>(table[kp / page_size]) * page_size + kp % page_size) * kv_dim +
                         head_offset + (idx % kChunks) * kVec;
      kraw[i] = *reinterpret_cast<const uint4*>(keys + at);
      vraw[i] = *reinterpret_cast<const uint4*>(values + at);
    }
  }
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int idx = threadIdx.x + i * kThreads;
    const int at = (idx / kChunks) * kStride + (idx % kChunks) * kVec;
    put_row_chunk(k_s + at, kraw[i], Kv{});
    put_row_chunk(v_s + at, vraw[i], Kv{});
  }
}

template <int D, typename Kv>
__global__ __launch_bounds__(kThreads) void prefill_attention_kernel(AttentionArgs a, int heads_per_block) {
  constexpr bool kFp8 = std::is_same_v<Kv, fp8>;
  constexpr int kStride = D + kPad;
  constexpr int kDimSteps = D / 16;     // k-steps of Q·Kᵀ, and 16-dim column pairs of P·V
  constexpr int kKeySteps = kKeys / 16;  // k-steps of P·V
  static_assert(kRows <= kKeys, "q is staged in k_s");
  __shared__ __align__(16) bf16 k_s[kKeys * kStride];
  __shared__ __align__(16) bf16 v_s[kKeys * kStride];
  bf16* q_s = k_s;  // q passes through k_s into registers before the first key step overwrites it
  wait_for_producer();
  let_consumer_start();

  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const TileHeads tile = tile_heads(a, heads_per_block);
  const int64_t first = tile.first;
  // Rows, positions and pages in 32 bits (all below max_seq_len times the group).
  const int count = static_cast<int>(tile.count);
  const int64_t kv_head = tile.kv_head;
  const int64_t head0 = tile.head0;
  const int nh = tile.nh;
  const int rows = count * nh;
  const int32_t* table = a.step.block_tables + static_cast<int64_t>(a.step.token_sequence[first]) * a.step.table_stride;
  const int p0 = a.step.token_position[first];
  const int last = p0 + count - 1;
  // A window reaching past the tile's first position restricts nothing: 0 then, so it fits 32 bits.
  const int window = a.window > 0 && a.window <= last ? static_cast<int>(a.window) : 0;
  const int first_key = window > 0 ? max(0, p0 - window + 1) : 0;

  // q · scale as bf16, with an fp8 cache's k_scale folded in (the keys stay unscaled e4m3 values).
  const float q_scale = a.scale * (kFp8 ? a.kv.k_scale : 1.0f);
  for (int idx = threadIdx.x; idx < kRows * (D / 4); idx += kThreads) {
    const int r = idx / (D / 4);
    const int c = (idx % (D / 4)) * 4;
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);  // rows past the tile: zeros, never stored
    if (r < rows) {
      const int64_t t = first + r / nh;
      const int64_t h = head0 + r % nh;
      v = *reinterpret_cast<const float4*>(a.q + t * a.q_stride + h * D + c);
    }
    *reinterpret_cast<uint2*>(q_s + r * kStride + c) =
        make_uint2(pack_bf16(v.x * q_scale, v.y * q_scale), pack_bf16(v.z * q_scale, v.w * q_scale));
  }
  __syncthreads();
  // This warp's 16 rows as A fragments, one per 16 dimensions: matrices (rows 0-7, cols 0-7),
  // (rows 8-15, cols 0-7), (rows 0-7, cols 8-15), (rows 8-15, cols 8-15) give a[0..3].
  uint32_t q_frag[kDimSteps][4];
#pragma unroll
  for (int kk = 0; kk < kDimSteps; ++kk) {
    const int row = warp * kRowsPerWarp + lane % 8 + ((lane / 8) % 2) * 8;
    ldmatrix_x4(q_frag[kk], q_s + row * kStride + kk * 16 + (lane / 16) * 8);
  }

  // This thread's two rows of the warp's 16 (the C fragment's g and g + 8) and their positions; a
  // row past the tile gets a position past `last`, computed like the others and never stored.
  const int row0 = warp * kRowsPerWarp + lane / 4;
  int pos[2];
#pragma unroll
  for (int i = 0; i < 2; ++i) pos[i] = p0 + (row0 + 8 * i) / nh;
  float m[2] = {-INFINITY, -INFINITY};
  float l[2] = {0.0f, 0.0f};  // this thread's share of each row's sum; the quad's shares add at the end
  float o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;

  for (int kb = first_key; kb <= last; kb += kKeys) {
    __syncthreads();  // q fragments loaded (first step) / the previous step's k_s and v_s consumed
    stage_keys<D, Kv>(a, table, kb, last, kv_head * D, k_s, v_s);
    __syncthreads();

    // S = Q Kᵀ: k_s rows are keys, so k_s is Kᵀ column-major, B of the .col MMA without .trans.
    // One ldmatrix covers keys 16p..16p+15 over 16 dimensions: matrices (keys 0-7, dims 0-7),
    // (keys 0-7, dims 8-15) are b0, b1 of key block 2p; (keys 8-15, ...) those of 2p + 1.
    float s[kKeys / 8][4];
#pragma unroll
    for (int n = 0; n < kKeys / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < kDimSteps; ++kk) {
#pragma unroll
      for (int p = 0; p < kKeys / 16; ++p) {
        uint32_t b[4];
        ldmatrix_x4(b, k_s + (p * 16 + (lane / 16) * 8 + lane % 8) * kStride + kk * 16 + ((lane / 8) % 2) * 8);
        mma_bf16(s[2 * p], q_frag[kk], b[0], b[1]);
        mma_bf16(s[2 * p + 1], q_frag[kk], b[2], b[3]);
      }
    }

    // Online softmax per row: mask (causal, window; keys past `last` are past every valid row's
    // position), the step's row maximum over the quad that shares the row, rescale. A step whose keys
    // every row of the tile sees (all of a long prefix's but the last) skips the mask.
    const bool unmasked = kb + kKeys - 1 <= p0 && (window == 0 || kb > last - window);
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      float step_max = -INFINITY;
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int kp = kb + n * 8 + 2 * (lane % 4) + e;
          float& v = s[n][2 * i + e];
          if (!unmasked && !(kp <= pos[i] && (window == 0 || kp > pos[i] - window))) v = -INFINITY;
          step_max = fmaxf(step_max, v);
        }
      }
      step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffffu, step_max, 1));
      step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffffu, step_max, 2));
      const float m_new = fmaxf(m[i], step_max);
      // Every key so far masked: exponents against 0, so masked scores give exp(-inf) = 0, not NaN.
      const float ref = m_new == -INFINITY ? 0.0f : m_new;
      const float correction = __expf(m[i] - ref);
      float sum = 0.0f;
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& v = s[n][2 * i + e];
          v = __expf(v - ref);
          sum += v;
        }
      }
      l[i] = l[i] * correction + sum;
      m[i] = m_new;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        o[n][2 * i] *= correction;
        o[n][2 * i + 1] *= correction;
      }
    }

    // O += P V. P's C fragments of key blocks 2kk and 2kk + 1 are, as bf16 pairs, the A fragment of
    // keys 16kk..16kk+15. v_s rows are keys, so V (B, k = key, n = dim) is row-major there: ldmatrix
    // .trans, matrices (keys 0-7, dims 0-7), (keys 8-15, dims 0-7) giving b0, b1 of dim block 2p and
    // (keys 0-7, dims 8-15), (keys 8-15, dims 8-15) those of 2p + 1.
#pragma unroll
    for (int kk = 0; kk < kKeySteps; ++kk) {
      const uint32_t pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                              pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int p = 0; p < kDimSteps; ++p) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, v_s + (kk * 16 + ((lane / 8) % 2) * 8 + lane % 8) * kStride + p * 16 + (lane / 16) * 8);
        mma_bf16(o[2 * p], pa, b[0], b[1]);
        mma_bf16(o[2 * p + 1], pa, b[2], b[3]);
      }
    }
  }

  // Normalise and store: each valid row saw at least its own position, so its sum is positive.
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
    l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    const int r = row0 + 8 * i;
    if (r >= rows) continue;
    const int64_t t = first + r / nh;
    const int64_t h = head0 + r % nh;
    const int64_t at = (t * a.step.heads + h) * D + 2 * (lane % 4);
    const float inv = (kFp8 ? a.kv.v_scale : 1.0f) / l[i];
    if (a.out_fp8) {
      const float q = inv / a.out_scale;
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        a.out_fp8[at + n * 8] = fp8(o[n][2 * i] * q);  // saturating, as the CPU's conversion
        a.out_fp8[at + n * 8 + 1] = fp8(o[n][2 * i + 1] * q);
      }
    } else {
#pragma unroll
      for (int n = 0; n < D / 8; ++n) {
        *reinterpret_cast<__nv_bfloat162*>(a.out + at + n * 8) =
            __floats2bfloat162_rn(o[n][2 * i] * inv, o[n][2 * i + 1] * inv);
      }
    }
  }
}

template <typename Kv>
void launch_prefill(const AttentionArgs& a, dim3 grid, int heads_per_block, cudaStream_t stream) {
  const dim3 threads(kThreads);
  switch (a.step.head_dim) {
    case 64:
      launch_kernel("prefill_attention_kernel", prefill_attention_kernel<64, Kv>, grid, threads, stream, a,
                    heads_per_block);
      break;
    case 128:
      launch_kernel("prefill_attention_kernel", prefill_attention_kernel<128, Kv>, grid, threads, stream, a,
                    heads_per_block);
      break;
    default:
      throw Error("CUDA prefill attention: head_dim " + std::to_string(a.step.head_dim) +
                  " is not supported (64, 128)");
  }
}

}  // namespace

int64_t prefill_attention_tile_tokens(int64_t heads, int64_t kv_heads) {
  const int64_t per_block = std::min<int64_t>(heads / kv_heads, kRows);
  return std::max<int64_t>(1, kRows / per_block);
}

bool prefill_attention_supports_head_dim(int64_t head_dim) { return head_dim == 64 || head_dim == 128; }

void prefill_attention(const AttentionArgs& a, cudaStream_t stream) {
  if (!prefill_attention_supports_head_dim(a.step.head_dim)) {
    throw Error("CUDA prefill attention: head_dim " + std::to_string(a.step.head_dim) + " is not supported (64, 128)");
  }
  if (a.splits != 1) {
    throw Error("CUDA prefill attention: " + std::to_string(a.splits) + " splits; it runs without split-KV (1)");
  }
  if (a.kv.dtype != DType::BF16 && a.kv.dtype != DType::F8E4M3) {
    throw Error(std::string("CUDA prefill attention: KV cache dtype ") + dtype_name(a.kv.dtype) +
                " is not supported (bf16, f8e4m3)");
  }
  if (reinterpret_cast<uintptr_t>(a.q) % 16 != 0 || a.q_stride % 4 != 0) {
    throw Error("CUDA prefill attention: q rows must be 16-byte aligned (q_stride " + std::to_string(a.q_stride) +
                " floats)");
  }
  if (a.num_tiles == 0) return;
  const int64_t group = a.step.heads / a.step.kv_heads;
  const int heads_per_block = static_cast<int>(std::min<int64_t>(group, kRows));
  const int64_t head_chunks = (group + heads_per_block - 1) / heads_per_block;
  const dim3 grid(static_cast<unsigned>(a.num_tiles), static_cast<unsigned>(a.step.kv_heads * head_chunks));
  if (a.kv.dtype == DType::F8E4M3) launch_prefill<fp8>(a, grid, heads_per_block, stream);
  else launch_prefill<bf16>(a, grid, heads_per_block, stream);
}

}  // namespace kiln::cuda
