#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "runtime/block_manager.h"
#include "runtime/sequence.h"

namespace kiln {

struct SchedulerLimits {
  int64_t max_running = 8;           // sequences in one step
  int64_t max_batched_tokens = 2048;  // decode tokens + prefill chunk tokens in one step
};

struct ScheduledSlice {
  Sequence* sequence = nullptr;
  int64_t start = 0;  // = sequence->computed when planned
  int64_t n = 0;
  bool wants_logits = false;  // the slice reaches the end of the sequence's tokens: sample after it
};

struct StepPlan {
  std::vector<ScheduledSlice> slices;  // running order: oldest first
  std::vector<Sequence*> preempted;
};

// In-flight batching. Each step, in this order, under one token budget:
//   1. decode: every running sequence with one token left to compute gets it, oldest first;
//   2. prefill: running sequences with more left get a chunk of what the budget still allows;
//   3. admission: when nothing was preempted this step, waiting sequences join FCFS while the
//      running limit, the budget and the pages allow (the head of the queue blocks the rest, so
//      a long prompt is never starved by short ones behind it).
// A sequence whose next tokens need pages that are not available preempts the newest running
// sequence (possibly itself): its pages are released and it goes back to the front of the queue to
// be recomputed later. A prefill chunk first shrinks to the pages left before preempting anyone.
// Admission reuses cached prefix pages but always leaves the last prompt token to compute, since
// its logits choose the first output token.
class Scheduler {
 public:
  Scheduler(BlockManager& blocks, SchedulerLimits limits);

  void add(std::unique_ptr<Sequence> sequence);
  StepPlan schedule();
  // After the forward pass of `plan`: the planned tokens now have keys and values in the cache.
  void complete(const StepPlan& plan);
  // Releases the sequence's pages and forgets it (stop, length, cancel). Returns false when unknown.
  bool remove(const std::string& id);

  Sequence* find(const std::string& id) const;
  int64_t running() const { return static_cast<int64_t>(running_.size()); }
  int64_t waiting() const { return static_cast<int64_t>(waiting_.size()); }
  const std::vector<Sequence*>& running_sequences() const { return running_; }
  const std::deque<Sequence*>& waiting_sequences() const { return waiting_; }

 private:
  void preempt(Sequence* victim, StepPlan& plan, int64_t& budget);
  // Makes room for `n` more computed tokens of `s`, preempting newest-first; false when `s` itself
  // was preempted.
  bool reserve(Sequence* s, int64_t n, StepPlan& plan, int64_t& budget);

  BlockManager& blocks_;
  SchedulerLimits limits_;
  std::map<std::string, std::unique_ptr<Sequence>> sequences_;
  std::vector<Sequence*> running_;  // admission order
  std::deque<Sequence*> waiting_;   // arrival order
};

}  // namespace kiln
