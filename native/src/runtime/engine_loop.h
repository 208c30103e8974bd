#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include "core/thread_pool.h"
#include "engine/engine.h"
#include "runtime/block_manager.h"
#include "runtime/request.h"
#include "runtime/scheduler.h"
#include "runtime/step_model.h"

namespace kiln {

struct ServingOptions {
  int64_t max_batch_size = 0;         // 0: the engine's limits.max_batch
  int64_t max_batched_tokens = 2048;  // token budget of one step
  // KV cache size, the first one set wins: a page count, a byte budget, a fraction of the memory
  // the backend has left (GPU: free device memory after weights and scratch; CPU: host memory less
  // the engine file, capped at room for max_batch_size sequences). None: GPU 0.9 of it, CPU that
  // room.
  int64_t kv_pages = 0;
  int64_t kv_cache_bytes = 0;
  double kv_memory_fraction = 0.0;
  int64_t page_size = 16;             // positions per KV page
  std::optional<DType> kv_dtype;      // CPU: F32 (default) or BF16; CUDA: BF16 (default) or F8E4M3
  int64_t max_queued = 256;           // requests waiting for their first admission
  int64_t max_input_len = 0;          // 0: max_seq_len - 1 (room for one generated token)
  int threads = 0;                    // 0: one per CPU the process may use (cpu_budget)
};

struct ServingLimits {
  int64_t max_input_len = 0;
  int64_t max_seq_len = 0;
  int64_t max_batch_size = 0;
  int64_t max_batched_tokens = 0;
  int64_t max_queued = 0;
  int64_t page_size = 0;
  int64_t kv_pages = 0;
  int64_t kv_bytes = 0;
  std::string kv_basis;  // how kv_pages was reached
  DType kv_dtype = DType::F32;
  std::string backend;   // "cpu" or "cuda"
  std::vector<int32_t> eos_token_ids;
  int32_t bos_token_id = -1;  // -1: none
};

struct ServingStats {
  int64_t running = 0;
  int64_t running_peak = 0;
  int64_t waiting = 0;
  int64_t pages_used = 0;
  int64_t pages_cached = 0;
  int64_t pages_total = 0;
  int64_t kv_bytes = 0;
  int64_t pages_used_peak = 0;
  double tokens_per_second = 0;  // generated, over the last few seconds
  double prefix_cache_hit_rate = 0;
  int64_t generated_tokens = 0;
  int64_t steps = 0;
  int64_t preemptions = 0;
  bool healthy = true;
};

// The backend options the loop's own constructor would use for `engine` (limits resolved from the
// engine's header); for callers that build a StepModel themselves.
StepModelOptions step_model_options(const Engine& engine, const ServingOptions& options);

// Called on the loop thread once per step with every event of that step (a request's events arrive
// in order). It must not call back into the loop synchronously.
using EventSink = std::function<void(std::vector<TokenEvent>&&)>;

// The serving loop: one native thread owns the scheduler, block manager and the step model (the
// backend, with its KV cache), and runs steps while there is work. Other threads talk to it only through submit/cancel/stats/close,
// which take a short lock. Cancelling frees the request's pages in the loop's next iteration,
// before its final event is delivered.
class EngineLoop {
 public:
  // Runs the engine on the backend of its target (make_step_model).
  EngineLoop(std::shared_ptr<const Engine> engine, const ServingOptions& options, EventSink sink);
  // Runs on `model`, which must have been built for this engine with these options' KV settings.
  EngineLoop(std::shared_ptr<const Engine> engine, const ServingOptions& options, std::unique_ptr<StepModel> model,
             EventSink sink);
  ~EngineLoop();
  EngineLoop(const EngineLoop&) = delete;
  EngineLoop& operator=(const EngineLoop&) = delete;

  // Validates and queues a request. Throws LimitError (prompt or maxTokens do not fit), OverloadError
  // (queue full) or Error (duplicate id, bad sampling parameters, loop closed or failed).
  void submit(GenerationRequest request);
  // Ends the request with FinishReason::Cancelled; unknown or finished ids are ignored.
  void cancel(const std::string& id);
  ServingStats stats() const;
  const ServingLimits& limits() const { return limits_; }
  // Cancels everything in flight and stops the thread; idempotent.
  void close();

 private:
  void run();
  // One iteration: apply submissions and cancels, run one step; returns the step's events.
  std::vector<TokenEvent> iterate(std::vector<GenerationRequest>& fresh, std::vector<std::string>& cancels, bool stopping);
  void run_step(std::vector<TokenEvent>& events);
  void finish(Sequence* s, FinishReason reason, std::vector<TokenEvent>& events, TokenEvent* event);
  void publish_stats();

  std::shared_ptr<const Engine> engine_;
  ServingLimits limits_;
  EventSink sink_;
  std::unique_ptr<StepModel> model_;
  BlockManager blocks_;
  Scheduler scheduler_;
  uint64_t next_arrival_ = 0;
  uint64_t seed_base_;
  std::vector<float> logits_;
  std::vector<int32_t> tokens_;
  // Host sampling of one step's rows, one row per chunk: each row has its own Sampler, so rows are
  // independent and the tokens do not depend on the pool's size. On the CPU backend this pool and
  // the model's are never busy at the same time.
  ThreadPool sample_pool_;
  // Per-step scratch of run_step, kept across steps so the token path does not allocate.
  std::vector<TokenChoice> choices_;
  std::vector<Sequence*> row_sequences_;
  std::vector<RowRequest> row_requests_;
  std::vector<int> sampled_rows_;
  std::vector<std::exception_ptr> sample_errors_;
  std::deque<std::pair<double, int64_t>> rate_window_;  // (seconds, generated total)
  int64_t stats_generated_ = 0;
  int64_t steps_ = 0;
  int64_t preemptions_ = 0;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<GenerationRequest> incoming_;
  std::vector<std::string> cancels_;
  std::set<std::string> live_ids_;
  int64_t queued_ = 0;  // submitted, not yet admitted once
  bool stopping_ = false;
  bool closed_ = false;
  ServingStats stats_;
  std::thread thread_;
};

}  // namespace kiln
