#pragma once

// Which tokens and query heads one block of the tiled attention kernels (paged_attention in
// kernels.cu, prefill_attention.cu) serves: the tokens of tile blockIdx.x, and for KV head
// blockIdx.y / head_chunks the chunk of at most heads_per_block of its query heads (a GQA group
// larger than a block's rows splits into chunks over blockIdx.y).

#include "backend/cuda/kernels.h"

namespace kiln::cuda {

struct TileHeads {
  int64_t first = 0;  // the tile's first token in the step
  int64_t count = 0;  // its tokens (consecutive positions of one sequence)
  int64_t kv_head = 0;
  int64_t head0 = 0;  // the chunk's first query head
  int nh = 0;         // query heads in the chunk
};

__device__ __forceinline__ TileHeads tile_heads(const AttentionArgs& a, int heads_per_block) {
  TileHeads t;
  t.first = a.tiles[2 * blockIdx.x];
  t.count = a.tiles[2 * blockIdx.x + 1];
  const int64_t group = a.step.heads / a.step.kv_heads;
  const int64_t head_chunks = (group + heads_per_block - 1) / heads_per_block;
  t.kv_head = blockIdx.y / head_chunks;
  const int64_t chunk = blockIdx.y % head_chunks;
  t.head0 = t.kv_head * group + chunk * heads_per_block;
  // Row arithmetic in the kernels divides by nh in 32 bits (a 64-bit divide is a long instruction
  // sequence, and these kernels are latency-bound at decode).
  t.nh = static_cast<int>(min(static_cast<int64_t>(heads_per_block), group - chunk * heads_per_block));
  return t;
}

}  // namespace kiln::cuda
