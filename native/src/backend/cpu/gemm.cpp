#include "backend/cpu/gemm.h"

#include <algorithm>

#include "backend/cpu/simd.h"
#include "core/error.h"

namespace kiln {

namespace {

using namespace cpu;

inline void store(const GemmProblem& p, int64_t m, int64_t n, float sum) {
  float v = sum * p.scale;
  if (p.row_scale) v *= p.row_scale[n];
  if (p.bias) v += p.bias[n];
  p.y[m * p.n + n] = v;
}

// Outputs [n0, n0 + R) for activation rows [m0, m0 + MB): each weight vector is loaded once and used
// MB times, each activation vector R times.
template <class W, int R, int MB, bool Panel>
void gemm_block(const GemmProblem& p, int64_t n0, int64_t m0) {
  const int64_t K = p.k;
  const int64_t k8 = K & ~int64_t{7};
  const uint8_t* panel = p.w + static_cast<size_t>(n0 * K) * W::kSize;
  F8x acc[MB][R];
  for (auto& row : acc) {
    for (auto& a : row) a = zero8();
  }
  for (int64_t k = 0; k < k8; k += 8) {
    F8x xv[MB];
    for (int mb = 0; mb < MB; ++mb) xv[mb] = load8(p.x + (m0 + mb) * K + k);
    for (int r = 0; r < R; ++r) {
      const uint8_t* wp = Panel ? panel + static_cast<size_t>(((k / 8) * R + r) * 8) * W::kSize
                                : p.w + static_cast<size_t>((n0 + r) * K + k) * W::kSize;
      const F8x wv = W::load(wp);
      for (int mb = 0; mb < MB; ++mb) acc[mb][r] = fma8(xv[mb], wv, acc[mb][r]);
    }
  }
  for (int mb = 0; mb < MB; ++mb) {
    for (int r = 0; r < R; ++r) {
      float s = sum8(acc[mb][r]);
      if (!Panel) {
        const float* x = p.x + (m0 + mb) * K;
        const uint8_t* w = p.w + static_cast<size_t>((n0 + r) * K) * W::kSize;
        for (int64_t k = k8; k < K; ++k) s += x[k] * W::one(w + static_cast<size_t>(k) * W::kSize);
      }
      store(p, m0 + mb, n0 + r, s);
    }
  }
}

template <class W, int R, int MB, bool Panel>
void gemm_row_blocks(const GemmProblem& p, int64_t first_block, int64_t end_block) {
  for (int64_t b = first_block; b < end_block; ++b) {
    const int64_t n0 = b * R;
    if (n0 + R <= p.n) {
      int64_t m0 = 0;
      for (; m0 + MB <= p.m; m0 += MB) gemm_block<W, R, MB, Panel>(p, n0, m0);
      for (; m0 < p.m; ++m0) gemm_block<W, R, 1, Panel>(p, n0, m0);
    } else {
      // Rows past the last full block; panel layouts never get here (they require n % R == 0).
      for (int64_t n = n0; n < p.n; ++n) {
        for (int64_t m = 0; m < p.m; ++m) gemm_block<W, 1, 1, false>(p, n, m);
      }
    }
  }
}

template <class W, int R, int MB, bool Panel>
void gemm_parallel(const GemmProblem& p, ThreadPool& pool, int threads) {
  const int64_t blocks = (p.n + R - 1) / R;
  const int width = threads == 0 ? pool.size() : threads;
  // A few chunks per thread even out blocks that straddle cache lines or hit busy cores.
  const int chunks = static_cast<int>(std::min<int64_t>(blocks, int64_t{width} * 4));
  pool.run(chunks, width, [&](int c) {
    gemm_row_blocks<W, R, MB, Panel>(p, blocks * c / chunks, blocks * (c + 1) / chunks);
  });
}

template <int R, int MB, bool Panel>
void gemm_tactic(const GemmProblem& p, ThreadPool& pool, int threads) {
  switch (p.w_dtype) {
    case DType::F32: return gemm_parallel<WeightF32, R, MB, Panel>(p, pool, threads);
    case DType::BF16: return gemm_parallel<WeightBF16, R, MB, Panel>(p, pool, threads);
    case DType::F16: return gemm_parallel<WeightF16, R, MB, Panel>(p, pool, threads);
    case DType::I8: return gemm_parallel<WeightI8, R, MB, Panel>(p, pool, threads);
    case DType::F8E4M3: return gemm_parallel<WeightF8E4M3, R, MB, Panel>(p, pool, threads);
    case DType::U8: break;
  }
  throw Error(std::string("cpu gemm: weight dtype ") + dtype_name(p.w_dtype) + " is not a weight dtype");
}

struct Variant {
  WeightLayout layout;
  const char* shape;
  void (*run)(const GemmProblem&, ThreadPool&, int);
};

}  // namespace

void register_cpu_gemm_tactics(TacticRegistry& registry) {
  // Register blocking stays within 16 vector registers: R x MB accumulators plus loads.
  const Variant variants[] = {
      {WeightLayout::Row, "r4m1", gemm_tactic<4, 1, false>},
      {WeightLayout::Row, "r8m1", gemm_tactic<8, 1, false>},
      {WeightLayout::Row, "r4m4", gemm_tactic<4, 4, false>},
      {WeightLayout::Row, "r8m2", gemm_tactic<8, 2, false>},
      {WeightLayout::Panel4, "r4m1", gemm_tactic<4, 1, true>},
      {WeightLayout::Panel4, "r4m4", gemm_tactic<4, 4, true>},
      {WeightLayout::Panel8, "r8m1", gemm_tactic<8, 1, true>},
      {WeightLayout::Panel8, "r8m2", gemm_tactic<8, 2, true>},
  };
  for (const auto& v : variants) {
    for (int threads : {1, 0}) {
      registry.add_gemm(GemmTactic{std::string("cpu.") + layout_name(v.layout) + "." + v.shape +
                                       (threads == 1 ? ".t1" : ".tall"),
                                   "cpu", v.layout, threads, v.run});
    }
  }
}

}  // namespace kiln
