#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "runtime/sampler.h"
#include "runtime/sequence.h"

namespace kiln {

struct GenerationRequest {
  std::string id;  // unique among live requests
  std::vector<int32_t> prompt;
  int64_t max_tokens = 16;
  SamplingParams sampling;
  std::vector<int32_t> stop_token_ids;  // besides the engine's eos ids
};

// What one engine step produced for one request. The last event of a request has `finished` set.
struct TokenEvent {
  std::string id;
  std::vector<TokenChoice> tokens;
  bool with_logprobs = false;
  bool finished = false;
  FinishReason reason = FinishReason::Stop;
  int64_t cached_prompt_tokens = -1;  // >= 0 on the first event of a request
  std::string error;                  // non-empty: the engine loop failed and the request ends with it
};

// The request queue is full: the caller should retry later (HTTP 429/503), not fix the request.
class OverloadError : public Error {
 public:
  using Error::Error;
};

// The request cannot fit the engine's limits; `field` names the request field at fault.
class LimitError : public Error {
 public:
  LimitError(const std::string& message, std::string field) : Error(message), field_(std::move(field)) {}
  const std::string& field() const { return field_; }

 private:
  std::string field_;
};

}  // namespace kiln
