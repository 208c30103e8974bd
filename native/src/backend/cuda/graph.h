#pragma once

#include <cuda_runtime.h>

#include "backend/cuda/check.h"

namespace kiln::cuda {

// What `enqueue()` puts on `stream`, captured (thread-local mode) and instantiated as one graph the
// caller owns (cudaGraphExecDestroy). When enqueue throws, the capture is ended and dropped first,
// so the stream takes direct launches again.
template <typename Enqueue>
cudaGraphExec_t capture_graph(cudaStream_t stream, Enqueue&& enqueue) {
  KILN_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  cudaGraph_t graph = nullptr;
  try {
    enqueue();
  } catch (...) {
    cudaStreamEndCapture(stream, &graph);
    if (graph) cudaGraphDestroy(graph);
    throw;
  }
  KILN_CUDA_CHECK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t status = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  KILN_CUDA_CHECK(status);
  return exec;
}

}  // namespace kiln::cuda
