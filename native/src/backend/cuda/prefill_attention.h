#pragma once

// Attention of prefill and mixed steps on tensor cores (mma.sync m16n8k16, bf16 in, fp32 accumulate),
// flash-attention-2 style: what paged_attention computes (kernels.h), for larger tiles. paged_attention
// runs on CUDA cores in fp32 with 16 query rows a block; here a block takes 64 query rows (a tile's
// tokens times the query heads of one KV head, rows being (token, head) pairs as there), so each key
// and value row it stages serves four times the rows, and both products run on tensor cores. q is
// rounded to bf16 (times scale) and the softmax weights P to bf16 for P·V; scores, the online softmax
// and the output accumulate in fp32. An fp8 cache's elements convert to bf16 exactly (3 mantissa
// bits); its k_scale is folded into q and its v_scale into the output, so no scaled key or value is
// rounded.

#include "backend/cuda/kernels.h"

namespace kiln::cuda {

// How many query tokens one prefill_attention tile may hold for a GQA group size (64 / group, at
// least 1; a group above 64 splits over several blocks per KV head, as paged_attention's head chunks).
int64_t prefill_attention_tile_tokens(int64_t heads, int64_t kv_heads);
// head_dim 64 or 128; model.cpp takes paged_attention for the others.
bool prefill_attention_supports_head_dim(int64_t head_dim);

// AttentionArgs as paged_attention reads them, except: tiles hold at most prefill_attention_tile_tokens
// tokens, and there is no split-KV (splits must be 1, partials are not used). q must be 16-byte
// aligned with q_stride a multiple of 4 (rows are read as float4). Throws Error for an unsupported
// head_dim, KV cache dtype or split count.
void prefill_attention(const AttentionArgs& args, cudaStream_t stream);

}  // namespace kiln::cuda
