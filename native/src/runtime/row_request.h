#pragma once

#include <cstdint>

namespace kiln {

// One token draw handed to a backend that samples on its own device: the truncation knobs of the
// request (SamplingParams) and the uniform number in [0, 1) that the request's host Sampler would
// have drawn next (Sampler::next_uniform), so the token is the one Sampler::choose picks for the
// same logits and the request's random stream stays where it would be on the host.
struct SampleDraw {
  float temperature = 1.0f;  // > 0
  int32_t top_k = 0;         // 0: off
  float top_p = 1.0f;        // 1: off
  float min_p = 0.0f;        // 0: off
  double u = 0.0;
};

// What one logit row of a step needs from the backend.
enum class RowWant : uint8_t {
  Greedy,  // the argmax token (first index on ties)
  Sample,  // a token drawn by the backend with `draw`
  Logits,  // the row's logits on the host (penalties, logprobs, or a backend that draws nothing)
};

struct RowRequest {
  RowWant want = RowWant::Logits;
  SampleDraw draw;  // for RowWant::Sample
};

}  // namespace kiln
