#pragma once

// Token draws on the device (issue #7): a sampled row's token comes from its logits where they
// already are, so a sampled step copies no vocab-sized rows to the host. The draw is the host
// Sampler's (runtime/sampler.cpp) for the same uniform number: temperature alone draws in token
// order; any of top-k / min-p / top-p draws over the candidates most likely first (ties by lower
// token id), after the same cuts. Nothing is sorted: radix searches over the candidates' sort keys
// find each cut and the drawn position (sampling.cu).

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "backend/cuda/device.h"
#include "runtime/row_request.h"

namespace kiln::cuda {

// One draw: `draw` against logits row `row`.
struct SampleJob {
  SampleDraw draw;
  int32_t row = 0;
};

// tokens[i] = the token jobs[i] draws from logits[jobs[i].row, :] (fp32, [rows, vocab]); jobs and
// tokens in device memory, one block per job.
void sample_rows(const float* logits, int64_t vocab, const SampleJob* jobs, int64_t n, int32_t* tokens,
                 cudaStream_t stream);

// sample_rows with its per-step upload and download: enqueue() copies the jobs up, draws, and
// copies the tokens down; tokens() holds them once the stream has synchronized.
class DeviceSampler {
 public:
  void enqueue(const float* logits, int64_t vocab, const std::vector<SampleJob>& jobs, cudaStream_t stream);
  const int32_t* tokens() const { return host_tokens_.get<int32_t>(); }

 private:
  int64_t capacity_ = 0;
  DeviceBuffer jobs_, tokens_;
  PinnedBuffer host_jobs_, host_tokens_;
};

}  // namespace kiln::cuda
