#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "engine/engine.h"

namespace kiln {

// Reads a calibration file: one JSON array of token ids per line (blank lines skipped). Errors name
// the line; ids must lie in [0, vocab_size). Sequences longer than `max_len` are cut to it.
std::vector<std::vector<int32_t>> read_calibration_sequences(const std::string& path, int64_t vocab_size,
                                                             int64_t max_len);

// Runs the (unquantized) engine over every sequence and returns, per linear weight, the largest
// absolute value its input took. `on_sequence(done, total)` may throw to cancel.
std::map<std::string, float> calibrate_input_amax(std::shared_ptr<const Engine> engine,
                                                  const std::vector<std::vector<int32_t>>& sequences, ThreadPool& pool,
                                                  const std::function<void(size_t, size_t)>& on_sequence = {});

}  // namespace kiln
