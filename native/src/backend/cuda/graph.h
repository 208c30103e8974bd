#pragma once

#include <cuda_runtime.h>

#include <utility>

#include "backend/cuda/check.h"
#include "backend/cuda/device.h"

namespace kiln::cuda {

// What `enqueue()` puts on `stream`, captured (thread-local mode) as a graph the caller owns
// (cudaGraphDestroy). When enqueue throws, the capture is ended and dropped first, so the stream
// takes direct launches again.
template <typename Enqueue>
cudaGraph_t capture(cudaStream_t stream, Enqueue&& enqueue) {
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
  return graph;
}

// The same, instantiated as one graph the caller owns (cudaGraphExecDestroy).
template <typename Enqueue>
cudaGraphExec_t capture_graph(cudaStream_t stream, Enqueue&& enqueue) {
  cudaGraph_t graph = capture(stream, std::forward<Enqueue>(enqueue));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t status = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  KILN_CUDA_CHECK(status);
  return exec;
}

// ms per replay of `exec`, launched `times` times back to back on `stream` (device time, events).
inline double replay_ms(cudaGraphExec_t exec, cudaStream_t stream, int times) {
  const EventPair events;
  KILN_CUDA_CHECK(cudaEventRecord(events.start(), stream));
  for (int i = 0; i < times; ++i) KILN_CUDA_CHECK(cudaGraphLaunch(exec, stream));
  KILN_CUDA_CHECK(cudaEventRecord(events.stop(), stream));
  return events.elapsed_us() / 1000.0 / times;
}

}  // namespace kiln::cuda
