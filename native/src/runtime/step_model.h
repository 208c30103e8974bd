#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "core/dtype.h"
#include "engine/engine.h"
#include "model/config.h"
#include "runtime/forward_batch.h"
#include "runtime/kv_sizing.h"
#include "runtime/row_request.h"

namespace kiln {

// The backend seam of the serving loop: one forward step of a mixed batch over the backend's own
// paged KV storage. The loop keeps everything else (block manager, scheduler, samplers, stop
// handling, event delivery) and only hands the step's batch through here; the block tables it
// passes index pages of the cache this model allocated.
class StepModel {
 public:
  virtual ~StepModel() = default;

  virtual const ModelConfig& config() const = 0;
  // "cpu" or "cuda".
  virtual const char* backend() const = 0;
  virtual const KvCacheSize& kv_size() const = 0;
  virtual DType kv_dtype() const = 0;
  // True when forward() can give the greedy token of a row without its logits reaching the host
  // (an argmax on the device): RowWant::Greedy.
  virtual bool greedy_without_logits() const = 0;
  // True when forward() can also draw a sampled row's token itself, as the host Sampler would for
  // the same uniform number: RowWant::Sample.
  virtual bool samples_without_logits() const { return false; }

  // Runs `batch`, writing every slice's keys and values into the cache. Each slice that wants
  // logits is a row, in slice order, with its request in `rows`: a Greedy row's argmax token (first
  // index on ties) and a Sample row's drawn token go to tokens[row]; a Logits row's vocab_size
  // logits to logits + row * vocab_size (the other rows there are unspecified). `tokens` and
  // `logits` may be null where no row needs them (a step of prefill chunks alone has no rows).
  virtual void forward(const ForwardBatch& batch, const RowRequest* rows, int32_t* tokens, float* logits) = 0;
};

// What a backend needs to build its model and size its cache.
struct StepModelOptions {
  int threads = 0;                // CPU worker threads; 0: one per CPU the process may use (cpu_budget)
  std::optional<DType> kv_dtype;  // unset: the backend's default (CPU fp32, CUDA bf16)
  KvSizingOptions kv;
  int64_t page_size = 16;
  int64_t max_seq_len = 0;
  int64_t max_batch_size = 0;
  int64_t max_batched_tokens = 0;
};

// The engine's target backend, from its header: "cuda" for an engine built with --target cuda,
// else "cpu".
std::string engine_backend(const Engine& engine);

// The StepModel for the engine's target. A CUDA engine in a build without the CUDA backend is an
// Error naming the target.
std::unique_ptr<StepModel> make_step_model(std::shared_ptr<const Engine> engine, const StepModelOptions& options);

}  // namespace kiln
