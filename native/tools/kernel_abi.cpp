// libkiln-kernels-abi: a C ABI over the CUDA backend's kernel launchers, so test/gpu/kernels_ref.py
// can call each one with PyTorch tensors (raw device pointers) and check it against a PyTorch
// reference. Every entry returns 0, or 1 with the error in kiln_abi_last_error(); it synchronizes
// the device before returning, so a fault inside the kernel surfaces as that entry's error instead
// of at some later call. Launches go to the legacy default stream, which PyTorch's default stream
// is, so the tensors' producers are ordered before them.

#include <cuda_runtime.h>

#include <cstdint>
#include <exception>
#include <string>
#include <vector>

#include "backend/cuda/check.h"
#include "backend/cuda/decode_attention.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/gemv.h"
#include "backend/cuda/kernels.h"
#include "backend/cuda/prefill_attention.h"
#include "backend/cuda/sampling.h"

using namespace kiln::cuda;

namespace {

thread_local std::string last_error;

template <typename F>
int guarded(F&& f) {
  try {
    f();
    KILN_CUDA_CHECK(cudaDeviceSynchronize());
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    return 1;
  }
}

// One cuBLASLt context for the process: never destroyed, because a static destructor would run
// after the CUDA runtime has torn its context down at exit.
const LtContext& lt_context() {
  static const LtContext* context = new LtContext();
  return *context;
}

cudaDataType_t gemm_input(int use_fp8) { return use_fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF; }

// kv_fp8 != 0: an E4M3 cache with these scales, else bf16 (scales unused).
KvCacheArgs kv_cache(void* keys, void* values, int kv_fp8, float k_scale, float v_scale) {
  return {keys, values, kv_fp8 ? kiln::DType::F8E4M3 : kiln::DType::BF16, k_scale, v_scale};
}

// The step geometry the RoPE/KV and attention entries take as flat C arguments.
PagedStep paged_step(int64_t tokens, const int32_t* token_sequence, const int32_t* token_position,
                     const int32_t* block_tables, int64_t table_stride, int64_t page_size, int64_t heads,
                     int64_t kv_heads, int64_t head_dim) {
  PagedStep s;
  s.tokens = tokens;
  s.token_sequence = token_sequence;
  s.token_position = token_position;
  s.block_tables = block_tables;
  s.table_stride = table_stride;
  s.page_size = page_size;
  s.heads = heads;
  s.kv_heads = kv_heads;
  s.head_dim = head_dim;
  return s;
}

// What kiln_paged_attention and kiln_prefill_attention share: the query rows, the cache, the step's
// tokens and pages, the tiles and the output.
AttentionArgs attention_args(const float* q, int64_t q_stride, const void* keys, const void* values,
                             const int32_t* block_tables, int64_t table_stride, const int32_t* token_sequence,
                             const int32_t* token_position, const int32_t* tiles, int64_t num_tiles, int64_t page_size,
                             int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t window, float scale, void* out,
                             void* out_fp8, float out_scale, int64_t tokens, int kv_fp8, float k_scale, float v_scale) {
  AttentionArgs a;
  a.q = q;
  a.q_stride = q_stride;
  a.kv = kv_cache(const_cast<void*>(keys), const_cast<void*>(values), kv_fp8, k_scale, v_scale);  // only read
  a.step = paged_step(tokens, token_sequence, token_position, block_tables, table_stride, page_size, heads, kv_heads,
                      head_dim);
  a.tiles = tiles;
  a.num_tiles = num_tiles;
  a.window = window;
  a.scale = scale;
  a.out = static_cast<bf16*>(out);
  a.out_fp8 = static_cast<fp8*>(out_fp8);
  a.out_scale = out_scale;
  return a;
}

}  // namespace

extern "C" {

const char* kiln_abi_last_error() { return last_error.c_str(); }

int64_t kiln_attention_tile_tokens(int64_t heads, int64_t kv_heads) { return attention_tile_tokens(heads, kv_heads); }
int64_t kiln_max_attention_splits() { return kMaxAttentionSplits; }
int64_t kiln_prefill_attention_tile_tokens(int64_t heads, int64_t kv_heads) {
  return prefill_attention_tile_tokens(heads, kv_heads);
}
int64_t kiln_gemv_max_rows(int normed) { return normed ? kGemvNormMaxRows : kGemvMaxRows; }

int kiln_embed_rows(const void* table, const int32_t* tokens, int64_t n, int64_t hidden, float* h) {
  return guarded([&] { embed_rows(static_cast<const bf16*>(table), tokens, n, hidden, h, nullptr); });
}

// use_fp8 != 0: rms_norm_to_fp8 with `scale`, else rms_norm_to_bf16 (scale unused).
int kiln_rms_norm(int use_fp8, const float* h, const int32_t* row_index, int64_t rows, int64_t hidden, const float* gamma,
                  float eps, float scale, void* y) {
  return guarded([&] {
    if (use_fp8) rms_norm_to_fp8(h, row_index, rows, hidden, gamma, eps, scale, static_cast<fp8*>(y), nullptr);
    else rms_norm_to_bf16(h, row_index, rows, hidden, gamma, eps, static_cast<bf16*>(y), nullptr);
  });
}

// kv_fp8 != 0: the cache is E4M3, holding k / k_scale and v / v_scale; else bf16 (scales unused).
// q_norm / k_norm: the QK norm's weights (Qwen3), or null.
int kiln_rope_and_write_kv(float* qkv, const float* bias, int64_t tokens, const int32_t* token_sequence,
                           const int32_t* token_position, const int32_t* block_tables, int64_t table_stride,
                           const float* cos, const float* sin, void* keys, void* values, int64_t page_size,
                           int64_t heads, int64_t kv_heads, int64_t head_dim, int kv_fp8, float k_scale,
                           float v_scale, const float* q_norm, const float* k_norm, float norm_eps) {
  return guarded([&] {
    RopeKvArgs a;
    a.qkv = qkv;
    a.bias = bias;
    a.q_norm = q_norm;
    a.k_norm = k_norm;
    a.norm_eps = norm_eps;
    a.step = paged_step(tokens, token_sequence, token_position, block_tables, table_stride, page_size, heads, kv_heads,
                        head_dim);
    a.cos = cos;
    a.sin = sin;
    a.kv = kv_cache(keys, values, kv_fp8, k_scale, v_scale);
    rope_and_write_kv(a, nullptr);
  });
}

// out_fp8 != null: the fp8 output form (out unused); splits > 1 needs partials; kv_fp8 as in
// kiln_rope_and_write_kv.
int kiln_paged_attention(const float* q, int64_t q_stride, const void* keys, const void* values,
                         const int32_t* block_tables, int64_t table_stride, const int32_t* token_sequence,
                         const int32_t* token_position, const int32_t* tiles, int64_t num_tiles, int64_t page_size,
                         int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t window, float scale, void* out,
                         void* out_fp8, float out_scale, int64_t splits, int64_t tokens, float* partials, int kv_fp8,
                         float k_scale, float v_scale) {
  return guarded([&] {
    AttentionArgs a = attention_args(q, q_stride, keys, values, block_tables, table_stride, token_sequence,
                                     token_position, tiles, num_tiles, page_size, heads, kv_heads, head_dim, window,
                                     scale, out, out_fp8, out_scale, tokens, kv_fp8, k_scale, v_scale);
    a.splits = splits;
    a.partials = partials;
    paged_attention(a, nullptr);
  });
}

// The tensor-core prefill attention (prefill_attention.h): kiln_paged_attention's arguments less the
// split-KV ones, with tiles of at most kiln_prefill_attention_tile_tokens tokens.
int kiln_prefill_attention(const float* q, int64_t q_stride, const void* keys, const void* values,
                           const int32_t* block_tables, int64_t table_stride, const int32_t* token_sequence,
                           const int32_t* token_position, const int32_t* tiles, int64_t num_tiles, int64_t page_size,
                           int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t window, float scale, void* out,
                           void* out_fp8, float out_scale, int64_t tokens, int kv_fp8, float k_scale, float v_scale) {
  return guarded([&] {
    prefill_attention(attention_args(q, q_stride, keys, values, block_tables, table_stride, token_sequence,
                                     token_position, tiles, num_tiles, page_size, heads, kv_heads, head_dim, window,
                                     scale, out, out_fp8, out_scale, tokens, kv_fp8, k_scale, v_scale),
                      nullptr);
  });
}

int kiln_decode_attention_supports(int64_t heads, int64_t kv_heads, int64_t head_dim) {
  return decode_attention_supports(heads, kv_heads, head_dim) ? 1 : 0;
}

// The decode-only step's fused RoPE + cache write + attention (decode_attention.h).
int kiln_decode_attention(const float* qkv, const float* bias, int64_t tokens, const int32_t* token_sequence,
                          const int32_t* token_position, const int32_t* block_tables, int64_t table_stride,
                          const float* cos, const float* sin, void* keys, void* values, int64_t page_size,
                          int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t window, float scale, void* out,
                          void* out_fp8, float out_scale, int64_t splits, float* partials, int32_t* counters,
                          int kv_fp8, float k_scale, float v_scale, const float* q_norm, const float* k_norm,
                          float norm_eps) {
  return guarded([&] {
    DecodeAttentionArgs a;
    a.qkv = qkv;
    a.bias = bias;
    a.q_norm = q_norm;
    a.k_norm = k_norm;
    a.norm_eps = norm_eps;
    a.step = paged_step(tokens, token_sequence, token_position, block_tables, table_stride, page_size, heads, kv_heads,
                        head_dim);
    a.cos = cos;
    a.sin = sin;
    a.kv = kv_cache(keys, values, kv_fp8, k_scale, v_scale);
    a.window = window;
    a.scale = scale;
    a.out = static_cast<bf16*>(out);
    a.out_fp8 = static_cast<fp8*>(out_fp8);
    a.out_scale = out_scale;
    a.splits = splits;
    a.partials = partials;
    a.counters = counters;
    decode_attention(a, nullptr);
  });
}

int kiln_silu_mul(int use_fp8, const float* gate_up, int64_t rows, int64_t inter, float scale, void* out) {
  return guarded([&] {
    if (use_fp8) silu_mul_to_fp8(gate_up, rows, inter, scale, static_cast<fp8*>(out), nullptr);
    else silu_mul_to_bf16(gate_up, rows, inter, static_cast<bf16*>(out), nullptr);
  });
}

int kiln_argmax_rows(const float* logits, int64_t rows, int64_t vocab, unsigned long long* keys) {
  return guarded([&] { argmax_rows(logits, rows, vocab, keys, nullptr); });
}

// sample_rows (sampling.h) for n draws whose knobs, uniforms and logits rows come in host arrays
// (the jobs are uploaded here); the tokens go to device memory.
int kiln_sample_rows(const float* logits, int64_t vocab, int64_t n, const float* temperature, const int32_t* top_k,
                     const float* top_p, const float* min_p, const double* u, const int32_t* rows, int32_t* tokens) {
  return guarded([&] {
    std::vector<SampleJob> jobs(static_cast<size_t>(n));
    for (size_t i = 0; i < jobs.size(); ++i) {
      jobs[i].draw.temperature = temperature[i];
      jobs[i].draw.top_k = top_k[i];
      jobs[i].draw.top_p = top_p[i];
      jobs[i].draw.min_p = min_p[i];
      jobs[i].draw.u = u[i];
      jobs[i].row = rows[i];
    }
    DeviceBuffer device_jobs(jobs.size() * sizeof(SampleJob), "sample jobs");
    KILN_CUDA_CHECK(cudaMemcpy(device_jobs.get(), jobs.data(), device_jobs.bytes(), cudaMemcpyHostToDevice));
    sample_rows(logits, vocab, device_jobs.get<SampleJob>(), n, tokens, nullptr);
    KILN_CUDA_CHECK(cudaDeviceSynchronize());  // before the jobs' buffer goes
  });
}

// kiln-gemv with every option of gemv.h: x, or h (+ gamma, eps, in_scale) for the normed input;
// y (+ beta), or act (+ act_scale) for the SiLU·mul output; stage_input as the autotuner races it.
int kiln_gemv(const void* w, int use_fp8, int64_t m, int64_t n, int64_t k, float scale, const void* x, const float* h,
              const float* gamma, float eps, float in_scale, float* y, float beta, void* act, float act_scale,
              int split, int stage_input) {
  return guarded([&] {
    const GemvIn in{x, h, gamma, eps, in_scale};
    const GemvOut out{.y = y, .beta = beta, .act = act, .act_scale = act_scale};
    gemv(w, use_fp8 != 0, m, n, k, scale, in, out, split, nullptr, stage_input != 0);
  });
}

// bench/gpu/gemv_bench.py: `launches` back-to-back one-row GEMVs on a stream of their own (with
// PDL, as in a decode step), cycling over `copies` weight buffers so each streams from HBM; *us =
// microseconds per launch between two events. act set: the SiLU·mul output instead of y.
int kiln_gemv_bench(const void* const* ws, int64_t copies, int use_fp8, int64_t n, int64_t k, const void* x, float* y,
                    void* act, int split, int64_t launches, float* us) {
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr, stop = nullptr;
  const int status = guarded([&] {
    if (copies < 1 || launches < 1) throw kiln::Error("gemv bench: copies and launches must be at least 1");
    KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    KILN_CUDA_CHECK(cudaEventCreate(&start));
    KILN_CUDA_CHECK(cudaEventCreate(&stop));
    GemvIn in;
    in.x = x;
    GemvOut out;
    out.y = act ? nullptr : y;
    out.act = act;
    const auto run = [&](int64_t i) { gemv(ws[i % copies], use_fp8 != 0, 1, n, k, 1.0f, in, out, split, stream); };
    for (int64_t i = 0; i < copies; ++i) run(i);  // first launches (and any one-time set-up) untimed
    KILN_CUDA_CHECK(cudaEventRecord(start, stream));
    for (int64_t i = 0; i < launches; ++i) run(i);
    KILN_CUDA_CHECK(cudaEventRecord(stop, stream));
    KILN_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    KILN_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    *us = ms * 1000.0f / static_cast<float>(launches);
  });
  if (start) cudaEventDestroy(start);
  if (stop) cudaEventDestroy(stop);
  if (stream) cudaStreamDestroy(stream);
  return status;
}

// cuBLASLt through LtGemm: runs the `algo`-th of up to `max_algos` heuristic proposals for m rows
// and stores how many there were in *proposals (so the caller can walk all of them).
int kiln_lt_gemm(int use_fp8, const void* w, const void* x, int64_t m, int64_t n, int64_t k, float* y, float beta,
                 float alpha, int algo, int max_algos, int* proposals) {
  return guarded([&] {
    LtGemm gemm(lt_context(), n, k, gemm_input(use_fp8));
    const auto found = gemm.heuristic(m, max_algos);
    *proposals = static_cast<int>(found.size());
    if (algo < 0 || algo >= *proposals) {
      throw kiln::Error("algorithm " + std::to_string(algo) + " of " + std::to_string(*proposals) + " proposals");
    }
    gemm.run(found[static_cast<size_t>(algo)].algo, w, x, m, y, beta, nullptr, alpha);
  });
}

// TunedGemm::run, the engine's GEMM entry, with one bucket of `m` rows whose choice is `tactic`
// (0 cuBLASLt with the heuristic's first algorithm, 1 kiln-gemv with gemv_split): checks the
// dispatch between them.
int kiln_tuned_gemm(int use_fp8, const void* w, const void* x, int64_t m, int64_t n, int64_t k, float* y, float beta,
                    float scale, int tactic, int gemv_split) {
  return guarded([&] {
    if (tactic < 0 || tactic > 1) throw kiln::Error("tactic " + std::to_string(tactic) + " (0 or 1)");
    LtGemm probe(lt_context(), n, k, gemm_input(use_fp8));
    GemmChoice choice;
    choice.tactic = static_cast<GemmTactic>(tactic);
    choice.algo = probe.heuristic(m, 1).front().algo;
    choice.gemv_split = gemv_split;
    TunedGemm gemm(lt_context(), n, k, {{m, choice}}, gemm_input(use_fp8));
    gemm.run(w, x, m, y, beta, nullptr, scale);
  });
}

}  // extern "C"
