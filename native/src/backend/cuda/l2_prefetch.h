#pragma once

// Pulls a weight range into L2 ahead of the GEMM that reads it. At batch-1 decode the stretch
// between the QKV and o projections (RoPE, attention, the split-KV merge) is latency-bound and
// leaves DRAM idle, while the projections that follow stream their weights from DRAM; a bulk L2
// prefetch issued on a side stream in that stretch lets the next GEMV read from L2 instead. The
// GEMVs load weights with the evict-first hint, so lines prefetched for a later projection survive
// the streaming of the ones in between as long as they fit.

#include <cuda_runtime.h>

#include <cstdint>

namespace kiln::cuda {

// Issues L2 prefetches for [p, p + bytes) (p 16-byte aligned) and returns: the kernel does not wait
// for the lines, so it finishes in microseconds whatever the size.
void prefetch_to_l2(const void* p, int64_t bytes, cudaStream_t stream);

}  // namespace kiln::cuda
