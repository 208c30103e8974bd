#include <cstdint>
#include <string>

#include "backend/cuda/gemv_kernel.cuh"

// The E4M3 GEMV of up to 8 input rows on Hopper's own E4M3 tensor-core instruction (wgmma): kiln-gemv
// split 64 (gemv.h, kGemvWgmmaSplit), which KILN_CUDA_TACTIC=...=kiln-gemv/64 picks for any bucket
// it fits. Nothing picks it by default, as measured on H200s (8B fp8 decode, one engine, 3-6
// interleaved rounds): alone it is 4% slower than gemv_fp8.cu's kernel (gemv_bench.py, 8B gate_up:
// 31.4 against 30.3 us); gate_up on it in the step at batch 1 ran 2.54-2.58 ms on three cards, where
// the mma kernel's step ran 2.600 (a 2.4% gain), 2.571 (0.2%) and 2.540 (a 1.4% loss); at batch 8
// it lost (2.704 -> 2.841 ms), and o, QKV and down (64-96 blocks of 64 rows) lost badly (batch 1
// 2.597 -> 3.917 ms with all four on it). gemv_fp8.cu's kernel spends most of a step's
// instructions widening the weights to f16 for mma.sync (16 conversions of ~27 instructions), and
// those steps after the PDL wait are what limits it (H200, 8B fp8 batch 1: each instruction a step
// costs the decode step ~4-6 us, gemv_fp8.cu). wgmma multiplies E4M3 as it is: a step here is two loads before
// and two wgmma instructions after, with the weights going from global memory straight into the A
// fragments and the input row read by the tensor cores from shared memory.
//
// A block is one warpgroup (4 warps) on a tile of 64 weight rows and the whole of k. Lane (g, q) of
// warp w holds rows 16w + g and 16w + g + 8; a step is 64 bytes of k, lane q's 16 bytes at 16q.
// wgmma m64n8k32 takes four 32-bit A registers per lane: (row g, k 4q..4q+3), (row g + 8, same),
// (row g, k 16 + 4q..), (row g + 8, same). A dot product does not care in which order it visits
// k, so a step's two wgmmas take the lane's words (0, 1) and (2, 3) as those k positions, and the
// input row is staged in the order that matches: within each 64-byte block, shared word 4a + q
// holds input word 4q + a (a 4 x 4 transpose of words).
//
// The input B (k x 8, K-major) is read by a shared-memory descriptor without swizzling: 8 rows of
// 16 bytes make a core matrix and the two core matrices of a k32 step are LBO bytes apart. Only
// columns below M are real input rows; the others are never stored, so the core matrix of 16-byte
// chunk c may start at 16·M·c and let its rows M..7 fall on the next chunks' data: the staged rows
// take M·k bytes, not 8k (input row i's chunk c at 16·(M·c + i)).

namespace kiln::cuda::gemv_detail {

namespace {

constexpr int kWgmmaRows = 64;      // weight rows of a block (one warpgroup's m64)
constexpr int kWgmmaThreads = 128;  // one warpgroup
constexpr int kWgmmaStepBytes = 64;
constexpr int kWgmmaGroup = 4;  // steps a register set holds; two sets: 8 steps loaded before the wait
constexpr int64_t kWgmmaSharedBytes = 48 * 1024;
// Rows M..7 of the last core matrices reach this far past the staged rows.
constexpr int64_t tail_bytes(int64_t m) { return (8 - m) * 16; }

template <int M>
__device__ __forceinline__ uint64_t input_descriptor(uint32_t shared_address) {
  constexpr uint64_t kLeadingBytes = 16 * M;  // between the two core matrices of a k32 step
  constexpr uint64_t kStrideBytes = 128;   // between 8-row groups of B: there is one (n = 8)
  return static_cast<uint64_t>((shared_address & 0x3FFFF) >> 4) | ((kLeadingBytes >> 4) << 16) |
         ((kStrideBytes >> 4) << 32);
}

__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
// Waits until at most `Pending` committed groups are in flight, with the sums the retired group
// wrote passed through the asm: a "memory" clobber does not order registers, and the compiler
// could otherwise read them before the wait (Triton met this reordering: triton-lang/triton#7500).
template <int Pending>
__device__ __forceinline__ void wgmma_wait(float (&sums)[4]) {
  asm volatile("wgmma.wait_group.sync.aligned %4;\n"
               : "+f"(sums[0]), "+f"(sums[1]), "+f"(sums[2]), "+f"(sums[3])
               : "n"(Pending)
               : "memory");
}

// d = A (this lane's four words) · B (the descriptor's k32 x 8) + (accumulate ? d : 0).
__device__ __forceinline__ void wgmma_e4m3(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                           uint64_t b, int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %9, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n8k32.f32.e4m3.e4m3 {%0, %1, %2, %3}, {%4, %5, %6, %7}, %8, p, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(b), "r"(accumulate));
}

// One step's two wgmmas: words (0, 1) and (2, 3) of the lane's chunks of rows g (lo) and g + 8 (hi);
// `fresh`: the step starts a new partial sum. The second takes the step's chunks 2 and 3.
template <int M>
__device__ __forceinline__ void wgmma_step(float (&d)[4], const uint4& lo, const uint4& hi, uint64_t b, bool fresh) {
  wgmma_e4m3(d, lo.x, hi.x, lo.y, hi.y, b, fresh ? 0 : 1);
  wgmma_e4m3(d, lo.z, hi.z, lo.w, hi.w, b + 2 * M, 1);  // the descriptor counts 16-byte units
}

template <int M, bool kSilu>
__global__ __launch_bounds__(kWgmmaThreads) void gemv_wgmma_kernel(Args a) {
  extern __shared__ __align__(128) uint4 x_t[];  // the input rows, word-transposed per 64 bytes
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  const int g = lane / 4;
  const int q = lane % 4;
  const int64_t lo_row = static_cast<int64_t>(blockIdx.x) * kWgmmaRows + 16 * warp + g;
  const int64_t hi_row = lo_row + 8;
  const int64_t chunks = a.k / 16;
  // Rows past n read row 0 (any readable row: their sums are never stored).
  const uint4* w_lo = a.w + (lo_row < a.n ? lo_row : 0) * chunks + q;
  const uint4* w_hi = a.w + (hi_row < a.n ? hi_row : 0) * chunks + q;
  const int steps = static_cast<int>(a.k / kWgmmaStepBytes);  // a multiple of 2 groups (wgmma_fits)
  constexpr int kStepChunks = kWgmmaStepBytes / 16;

  uint4 lo[2][kWgmmaGroup];
  uint4 hi[2][kWgmmaGroup];
  const auto load = [&](int set, int group) {
#pragma unroll
    for (int u = 0; u < kWgmmaGroup; ++u) {
      const int64_t c = static_cast<int64_t>(group * kWgmmaGroup + u) * kStepChunks;
      lo[set][u] = __ldcs(w_lo + c);
      hi[set][u] = __ldcs(w_hi + c);
    }
  };
  load(0, 0);
  load(1, 1);
  float settled[4] = {};
  const bool early = !kSilu && a.y_settled && a.beta != 0.0f;
  if (early) each_fragment_output<M>(a, lo_row, q, [&](int64_t row, int i, int f) { settled[f] = __ldcg(a.y + i * a.n + row); });
  wait_for_producer();
  let_consumer_start();

  // Stage the input rows: in row i's 64-byte block b, transposed word 4a + q' = input word 4q' + a,
  // and transposed chunk c = 4b + a goes to x_t[M·c + i].
  for (int t = threadIdx.x; t < M * steps; t += kWgmmaThreads) {
    const int i = M == 1 ? 0 : t / steps;
    const int b = M == 1 ? t : t - i * steps;
    const uint4* src = a.x + static_cast<int64_t>(i) * chunks + static_cast<int64_t>(b) * 4;
    const uint4 v0 = src[0], v1 = src[1], v2 = src[2], v3 = src[3];
    uint4* dst = x_t + static_cast<int64_t>(b) * 4 * M + i;
    dst[0] = make_uint4(v0.x, v1.x, v2.x, v3.x);
    dst[M] = make_uint4(v0.y, v1.y, v2.y, v3.y);
    dst[2 * M] = make_uint4(v0.z, v1.z, v2.z, v3.z);
    dst[3 * M] = make_uint4(v0.w, v1.w, v2.w, v3.w);
  }
  // The tensor cores read shared memory through the async proxy: the stores above must reach it.
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();

  // Hopper's E4M3 wgmma keeps about 14 bits of its running sum (DeepSeek-V3's report: up to 2%
  // error over k = 4096), so each register set's group (256 products a row) sums afresh and is
  // added to `d` in fp32 once its wgmmas are done, as cuBLASLt does without fast accumulation.
  const uint64_t b0 = input_descriptor<M>(static_cast<uint32_t>(__cvta_generic_to_shared(x_t)));
  float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  float part[2][4] = {};
  const auto add = [&](const float (&p)[4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) d[i] += p[i];
  };
  const int groups = steps / kWgmmaGroup;
  for (int group = 0; group < groups; group += 2) {
#pragma unroll
    for (int set = 0; set < 2; ++set) {
      wgmma_fence();
#pragma unroll
      for (int u = 0; u < kWgmmaGroup; ++u) {
        const int step = (group + set) * kWgmmaGroup + u;
        wgmma_step<M>(part[set], lo[set][u], hi[set][u], b0 + static_cast<uint64_t>(step) * (kWgmmaStepBytes >> 4) * M,
                      u == 0);
      }
      wgmma_commit();
    }
    // A set's registers (weights and partial sums) are free once its wgmmas are done: its sums go
    // into d and it is reloaded with the group two on.
    wgmma_wait<1>(part[0]);
    add(part[0]);
    if (group + 2 < groups) load(0, group + 2);
    wgmma_wait<0>(part[1]);
    add(part[1]);
    if (group + 3 < groups) load(1, group + 3);
  }

  store_fragment<M, kSilu>(a, lo_row, g, q, d, early, settled);
}

template <int M>
void launch_rows(const Args& a, bool silu, cudaStream_t stream) {
  const dim3 blocks(static_cast<unsigned>((a.n + kWgmmaRows - 1) / kWgmmaRows));
  const size_t shared = static_cast<size_t>(M * a.k + tail_bytes(M));
  if (silu) {
    launch_kernel_shared("gemv_wgmma_kernel", gemv_wgmma_kernel<M, true>, blocks, dim3(kWgmmaThreads), shared, stream, a);
  } else {
    launch_kernel_shared("gemv_wgmma_kernel", gemv_wgmma_kernel<M, false>, blocks, dim3(kWgmmaThreads), shared, stream, a);
  }
}

}  // namespace

bool wgmma_fits(int64_t m, int64_t k, bool norm) {
  // The staged rows in the default 48 KB of dynamic shared memory (no opt-in, so that blocks still
  // share an SM): one row of every 8B and 70B projection, 8 rows of k = 4096 (a 405B down
  // projection, k = 53248, is refused).
  return m >= 1 && m <= 8 && !norm && k > 0 && k % (2 * kWgmmaGroup * kWgmmaStepBytes) == 0 &&
         m * k + tail_bytes(m) <= kWgmmaSharedBytes;
}

void launch_fp8_wgmma(const Args& a, int64_t m, bool silu, cudaStream_t stream) {
  switch (m) {
    case 1: launch_rows<1>(a, silu, stream); return;
    case 2: launch_rows<2>(a, silu, stream); return;
    case 3: launch_rows<3>(a, silu, stream); return;
    case 4: launch_rows<4>(a, silu, stream); return;
    case 5: launch_rows<5>(a, silu, stream); return;
    case 6: launch_rows<6>(a, silu, stream); return;
    case 7: launch_rows<7>(a, silu, stream); return;
    case 8: launch_rows<8>(a, silu, stream); return;
  }
  throw Error("kiln-gemv: the wgmma kernel takes 1-8 input rows, not " + std::to_string(m));
}

}  // namespace kiln::cuda::gemv_detail
