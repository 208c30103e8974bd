#pragma once

// The CUDA backend's own kernels (everything of a decoder step except the GEMMs, which are cuBLASLt).
// Activations: the residual stream is fp32, GEMM inputs bf16 (fp8 engines: E4M3, quantized with the
// GEMM's calibrated per-tensor input scale by the kernel that produces them), GEMM outputs fp32;
// weights bf16 or E4M3; the KV cache bf16 or E4M3 (KvCacheArgs) in the page layout of runtime/kv_cache.h. Each launcher
// checks its launch; every kernel is launched with Programmatic Dependent Launch (launch.cuh).

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace kiln::cuda {

using bf16 = __nv_bfloat16;
using fp8 = __nv_fp8_e4m3;

// One layer's cached keys and values as a kernel sees them. BF16: the values themselves. F8E4M3:
// e4m3(x / scale), saturating at ±448, read back as e4m3 · scale; each launcher runs a separate
// instantiation per dtype, so the bf16 kernels are the same code as before fp8 caches existed.
struct KvCacheArgs {
  void* keys = nullptr;
  void* values = nullptr;
  DType dtype = DType::BF16;  // BF16 or F8E4M3
  float k_scale = 1.0f;       // F8E4M3 only
  float v_scale = 1.0f;
};

// Where each token of a step sits: its sequence's block table and its position (page
// block_tables[seq][pos / page_size], slot pos % page_size; RoPE angle pos), and the head geometry.
// The RoPE/KV writer and both attention kernels read a step through this.
struct PagedStep {
  int64_t tokens = 0;
  const int32_t* token_sequence = nullptr;
  const int32_t* token_position = nullptr;
  const int32_t* block_tables = nullptr;  // [sequences, table_stride]
  int64_t table_stride = 0;
  int64_t page_size = 0;
  int64_t heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
};

// h[t] = float(table[tokens[t]]) for t < n.
void embed_rows(const bf16* table, const int32_t* tokens, int64_t n, int64_t hidden, float* h, cudaStream_t stream);

// y[r] = bf16(x · rsqrt(mean(x²) + eps) · gamma) with x = h[row_index ? row_index[r] : r]; gamma may
// be null (folded into the next projection).
void rms_norm_to_bf16(const float* h, const int32_t* row_index, int64_t rows, int64_t hidden, const float* gamma,
                      float eps, bf16* y, cudaStream_t stream);
// The same with the output quantized for an fp8 GEMM: y[r] = e4m3(normed / scale), saturating.
void rms_norm_to_fp8(const float* h, const int32_t* row_index, int64_t rows, int64_t hidden, const float* gamma,
                     float eps, float scale, fp8* y, cudaStream_t stream);

// Per token of the batch: adds the QKV bias (when given), rotates q and k (HF rotate_half
// convention) in place in the fp32 qkv rows, and writes k and v in the cache's dtype into the
// token's cache slot.
struct RopeKvArgs {
  float* qkv = nullptr;  // [tokens, q_dim + 2 kv_dim]
  const float* bias = nullptr;
  // QK norm (Qwen3): each head of q and k RMS-normalised over head_dim with these weights, after the
  // bias and before the rotation; both or neither.
  const float* q_norm = nullptr;  // [head_dim]
  const float* k_norm = nullptr;
  float norm_eps = 0.0f;
  PagedStep step;
  const float* cos = nullptr;  // [positions, head_dim / 2]
  const float* sin = nullptr;
  KvCacheArgs kv;  // this layer's pages
};
void rope_and_write_kv(const RopeKvArgs& args, cudaStream_t stream);

// Causal attention of a mixed batch through the block tables, fp32 softmax (online, flash-style);
// cached rows are read 16 bytes at a time (8 bf16 or 16 e4m3 elements) and dequantized to fp32.
// Work is split into tiles of consecutive query tokens of one sequence (`tiles` holds first token and
// count per tile, at most tokens_per_tile(group) tokens); each block handles one tile for one KV head
// and the query heads that share it, so every key and value row is loaded once per tile.
struct AttentionArgs {
  const float* q = nullptr;  // token t, head h at q + t * q_stride + h * head_dim
  int64_t q_stride = 0;
  KvCacheArgs kv;  // read only
  PagedStep step;  // tokens: of the whole batch (the merge runs over all of them)
  const int32_t* tiles = nullptr;  // [num_tiles][2]
  int64_t num_tiles = 0;
  int64_t window = 0;  // 0 = the whole prefix
  float scale = 1.0f;
  bf16* out = nullptr;  // [tokens, heads * head_dim]
  // fp8 engines: when set, the output goes here instead, as e4m3(value / out_scale) (the o
  // projection's calibrated input scale).
  fp8* out_fp8 = nullptr;
  float out_scale = 1.0f;
  // Split-KV (flash-decoding): with splits > 1 each tile's key range is cut into `splits` parts run
  // by separate blocks, whose partial softmax states (max, sum, unnormalised output: head_dim + 2
  // floats per token, head and split) go to `partials` and are merged by a second kernel. Decode
  // tiles hold one token, so without splitting a batch-1 step would run on kv_heads blocks only.
  int64_t splits = 1;
  float* partials = nullptr;  // [tokens, heads, splits, head_dim + 2]
};
void paged_attention(const AttentionArgs& args, cudaStream_t stream);
// How many query tokens one attention tile may hold for a GQA group size.
int64_t attention_tile_tokens(int64_t heads, int64_t kv_heads);
// Key splits for a step of `tiles` tiles: enough blocks to fill `multiprocessors` about twice, at most
// kMaxAttentionSplits; 1 when the tiles alone fill the GPU (prefill, large decode batches).
constexpr int64_t kMaxAttentionSplits = 16;
int64_t attention_splits(int64_t tiles, int64_t heads, int64_t kv_heads, int multiprocessors);
bool attention_supports_head_dim(int64_t head_dim);

// out[r, i] = bf16(silu(gate_up[r, 2i]) · gate_up[r, 2i + 1]): gate and up interleaved (the CUDA model
// stores the gate_up weight's rows as (gate_0, up_0, gate_1, ...), see CudaModel::upload).
void silu_mul_to_bf16(const float* gate_up, int64_t rows, int64_t inter, bf16* out, cudaStream_t stream);
// out[r, i] = e4m3(silu(gate_up[r, 2i]) · gate_up[r, 2i + 1] / scale), saturating.
void silu_mul_to_fp8(const float* gate_up, int64_t rows, int64_t inter, float scale, fp8* out, cudaStream_t stream);

// Greedy sampling on the device: keys[r] = the largest logits[r, :] and its index packed into one
// 64-bit key (order-preserving value bits above, ~index below), so an atomicMax over many blocks per
// row keeps the largest value and, on ties, the first index (as torch.argmax). `keys` is zeroed by
// the launcher; argmax_index(key) unpacks on the host.
void argmax_rows(const float* logits, int64_t rows, int64_t vocab, unsigned long long* keys, cudaStream_t stream);
inline int32_t argmax_index(unsigned long long key) { return static_cast<int32_t>(0xffffffffu - static_cast<uint32_t>(key)); }

}  // namespace kiln::cuda
