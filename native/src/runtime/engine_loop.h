#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "core/thread_pool.h"
#include "engine/engine.h"
#include "runtime/block_manager.h"
#include "runtime/kv_cache.h"
#include "runtime/model.h"
#include "runtime/request.h"
#include "runtime/scheduler.h"

namespace kiln {

struct ServingOptions {
  int64_t max_batch_size = 0;         // 0: the engine's limits.max_batch
  int64_t max_batched_tokens = 2048;  // token budget of one step
  int64_t kv_pages = 0;               // 0: room for max_batch_size sequences of max_seq_len
  int64_t page_size = 16;             // positions per KV page
  DType kv_dtype = DType::F32;        // F32 or BF16
  int64_t max_queued = 256;           // requests waiting for their first admission
  int64_t max_input_len = 0;          // 0: max_seq_len - 1 (room for one generated token)
  int threads = 0;                    // 0: one per hardware thread
};

struct ServingLimits {
  int64_t max_input_len = 0;
  int64_t max_seq_len = 0;
  int64_t max_batch_size = 0;
  int64_t max_batched_tokens = 0;
  int64_t max_queued = 0;
  int64_t page_size = 0;
  int64_t kv_pages = 0;
  DType kv_dtype = DType::F32;
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
  int64_t pages_used_peak = 0;
  double tokens_per_second = 0;  // generated, over the last few seconds
  double prefix_cache_hit_rate = 0;
  int64_t generated_tokens = 0;
  int64_t steps = 0;
  int64_t preemptions = 0;
  bool healthy = true;
};

// Called on the loop thread once per step with every event of that step (a request's events arrive
// in order). It must not call back into the loop synchronously.
using EventSink = std::function<void(std::vector<TokenEvent>&&)>;

// The serving loop: one native thread owns the scheduler, block manager, KV cache and model, and
// runs steps while there is work. Other threads talk to it only through submit/cancel/stats/close,
// which take a short lock. Cancelling frees the request's pages in the loop's next iteration,
// before its final event is delivered.
class EngineLoop {
 public:
  EngineLoop(std::shared_ptr<const Engine> engine, const ServingOptions& options, EventSink sink);
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
  ThreadPool pool_;
  Model model_;
  KvCache cache_;
  BlockManager blocks_;
  Scheduler scheduler_;
  uint64_t next_arrival_ = 0;
  uint64_t seed_base_;
  std::vector<float> logits_;
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
