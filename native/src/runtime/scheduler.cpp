#include "runtime/scheduler.h"

#include <algorithm>

#include "core/error.h"

namespace kiln {

Scheduler::Scheduler(BlockManager& blocks, SchedulerLimits limits) : blocks_(blocks), limits_(limits) {
  if (limits.max_running < 1) throw Error("scheduler: maxBatchSize must be at least 1");
  // Every running sequence must be able to decode in every step.
  if (limits.max_batched_tokens < limits.max_running) {
    throw Error("scheduler: maxNumBatchedTokens (" + std::to_string(limits.max_batched_tokens) +
                ") must be at least maxBatchSize (" + std::to_string(limits.max_running) + ")");
  }
}

void Scheduler::add(std::unique_ptr<Sequence> sequence) {
  const std::string id = sequence->id;
  if (sequences_.count(id)) throw Error("scheduler: request id \"" + id + "\" is already in flight");
  waiting_.push_back(sequence.get());
  sequences_[id] = std::move(sequence);
}

Sequence* Scheduler::find(const std::string& id) const {
  const auto it = sequences_.find(id);
  return it == sequences_.end() ? nullptr : it->second.get();
}

void Scheduler::preempt(Sequence* victim, StepPlan& plan, int64_t& budget) {
  const auto slice = std::find_if(plan.slices.begin(), plan.slices.end(),
                                  [&](const ScheduledSlice& s) { return s.sequence == victim; });
  if (slice != plan.slices.end()) {
    budget += slice->n;
    plan.slices.erase(slice);
  }
  blocks_.release(victim->block_table);
  victim->computed = 0;
  victim->published_pages = 0;
  running_.erase(std::find(running_.begin(), running_.end(), victim));
  // Every waiting sequence arrived after every running one (FCFS admission), and victims go
  // newest-first, so pushing to the front keeps the queue in arrival order.
  waiting_.push_front(victim);
  plan.preempted.push_back(victim);
}

bool Scheduler::reserve(Sequence* s, int64_t n, StepPlan& plan, int64_t& budget) {
  while (!blocks_.grow(s->block_table, s->computed + n)) {
    Sequence* victim = running_.back();
    preempt(victim, plan, budget);
    if (victim == s) return false;
  }
  return true;
}

StepPlan Scheduler::schedule() {
  StepPlan plan;
  int64_t budget = limits_.max_batched_tokens;

  // 1. decode
  for (size_t i = 0; i < running_.size(); ++i) {
    Sequence* s = running_[i];
    if (s->uncomputed() != 1 || budget < 1) continue;
    if (!reserve(s, 1, plan, budget)) break;  // s was the newest: nothing after it is left
    plan.slices.push_back(ScheduledSlice{s, s->computed, 1, true});
    budget -= 1;
  }
  // 2. prefill chunks of running sequences
  for (size_t i = 0; i < running_.size() && budget > 0; ++i) {
    Sequence* s = running_[i];
    if (s->uncomputed() <= 1) continue;
    int64_t n = std::min(s->uncomputed(), budget);
    // Shrink to the pages there are before taking anyone's.
    const int64_t room = (static_cast<int64_t>(s->block_table.size()) + blocks_.available_pages()) * blocks_.page_size() - s->computed;
    if (room >= 1) n = std::min(n, room);
    if (!reserve(s, n, plan, budget)) break;
    plan.slices.push_back(ScheduledSlice{s, s->computed, n, s->computed + n == static_cast<int64_t>(s->tokens.size())});
    budget -= n;
  }
  // 3. admission
  while (plan.preempted.empty() && !waiting_.empty() && running() < limits_.max_running && budget > 0) {
    Sequence* s = waiting_.front();
    const auto total = static_cast<int64_t>(s->tokens.size());
    const int64_t cached = blocks_.share_cached_prefix(s->block_table, s->tokens, total - 1);
    s->computed = cached;
    s->published_pages = static_cast<int64_t>(s->block_table.size());
    int64_t n = std::min(total - cached, budget);
    const int64_t room = (static_cast<int64_t>(s->block_table.size()) + blocks_.available_pages()) * blocks_.page_size() - cached;
    n = std::min(n, room);
    if (n < 1 || !blocks_.grow(s->block_table, cached + n)) {
      blocks_.release(s->block_table);
      s->computed = 0;
      s->published_pages = 0;
      break;
    }
    if (!s->admitted_before) s->cached_prompt_tokens = cached;
    s->admitted_before = true;
    waiting_.pop_front();
    running_.insert(std::upper_bound(running_.begin(), running_.end(), s,
                                     [](const Sequence* a, const Sequence* b) { return a->arrival < b->arrival; }),
                    s);
    plan.slices.push_back(ScheduledSlice{s, cached, n, cached + n == total});
    budget -= n;
  }
  return plan;
}

void Scheduler::complete(const StepPlan& plan) {
  for (const ScheduledSlice& slice : plan.slices) {
    Sequence* s = slice.sequence;
    s->computed = slice.start + slice.n;
    blocks_.publish_full_pages(s->block_table, s->tokens, s->computed, s->published_pages);
  }
}

bool Scheduler::remove(const std::string& id) {
  const auto it = sequences_.find(id);
  if (it == sequences_.end()) return false;
  Sequence* s = it->second.get();
  blocks_.release(s->block_table);
  const auto r = std::find(running_.begin(), running_.end(), s);
  if (r != running_.end()) running_.erase(r);
  const auto w = std::find(waiting_.begin(), waiting_.end(), s);
  if (w != waiting_.end()) waiting_.erase(w);
  sequences_.erase(it);
  return true;
}

}  // namespace kiln
