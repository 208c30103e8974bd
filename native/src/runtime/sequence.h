#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/sampler.h"

namespace kiln {

enum class FinishReason { Stop, Length, Cancelled };

// One request as the runtime tracks it. `tokens` is the prompt followed by every generated token;
// the first `computed` of them have keys and values in the pages of `block_table`. Preemption drops
// the pages and sets computed to 0; the tokens stay, so the sequence resumes by recomputing them.
struct Sequence {
  std::string id;
  uint64_t arrival = 0;  // FCFS order; preemption takes the highest
  std::vector<int32_t> tokens;
  int64_t prompt_len = 0;
  int64_t max_tokens = 1;
  std::vector<int32_t> stop_token_ids;
  Sampler sampler;

  int64_t computed = 0;
  std::vector<int32_t> block_table;
  int64_t published_pages = 0;  // of block_table, offered to the prefix cache
  bool admitted_before = false;
  int64_t cached_prompt_tokens = 0;  // served from the prefix cache at first admission

  Sequence(std::string id_, std::vector<int32_t> prompt, int64_t max_tokens_, std::vector<int32_t> stops,
           Sampler sampler_)
      : id(std::move(id_)), tokens(std::move(prompt)), prompt_len(static_cast<int64_t>(tokens.size())),
        max_tokens(max_tokens_), stop_token_ids(std::move(stops)), sampler(std::move(sampler_)) {}

  int64_t generated() const { return static_cast<int64_t>(tokens.size()) - prompt_len; }
  int64_t uncomputed() const { return static_cast<int64_t>(tokens.size()) - computed; }
};

}  // namespace kiln
