// Scheduling policies without a model: a step "computes" what the plan says and appends a fake
// token to every slice that wants logits, as the engine loop does with real ones.
#include <gtest/gtest.h>

#include <algorithm>

#include "core/error.h"
#include "runtime/scheduler.h"

namespace kiln::test {
namespace {

// A plan copied out before finished sequences are removed (their Sequence objects go with them).
struct StepView {
  struct Slice {
    std::string id;
    int64_t start, n;
    bool wants_logits;
  };
  std::vector<Slice> slices;
  std::vector<std::string> preempted;
};

struct Harness {
  BlockManager blocks;
  Scheduler scheduler;
  uint64_t arrivals = 0;

  Harness(int64_t pages, int64_t page_size, SchedulerLimits limits) : blocks(pages, page_size), scheduler(blocks, limits) {}

  void add(const std::string& id, int64_t prompt_len, int64_t max_tokens = 100, int32_t first_token = 10) {
    std::vector<int32_t> prompt;
    for (int64_t i = 0; i < prompt_len; ++i) prompt.push_back(first_token + static_cast<int32_t>(i));
    auto s = std::make_unique<Sequence>(id, prompt, max_tokens, std::vector<int32_t>{}, Sampler(SamplingParams{}, 0));
    s->arrival = arrivals++;
    scheduler.add(std::move(s));
  }

  // Runs one step; finished sequences (max_tokens reached) are removed.
  StepView step() {
    StepPlan plan = scheduler.schedule();
    scheduler.complete(plan);
    StepView view;
    for (const auto& slice : plan.slices) view.slices.push_back({slice.sequence->id, slice.start, slice.n, slice.wants_logits});
    for (const Sequence* p : plan.preempted) view.preempted.push_back(p->id);
    std::vector<std::string> done;
    for (const auto& slice : plan.slices) {
      if (!slice.wants_logits) continue;
      slice.sequence->tokens.push_back(1);
      if (slice.sequence->generated() >= slice.sequence->max_tokens) done.push_back(slice.sequence->id);
    }
    for (const auto& id : done) scheduler.remove(id);
    blocks.audit();
    return view;
  }
};

std::vector<std::pair<std::string, int64_t>> shape(const StepView& p) {
  std::vector<std::pair<std::string, int64_t>> out;
  for (const auto& s : p.slices) out.emplace_back(s.id, s.n);
  return out;
}

TEST(Scheduler, AdmitsFirstComeFirstServedUpToTheRunningLimit) {
  Harness h(64, 4, {2, 100});
  h.add("a", 3);
  h.add("b", 3);
  h.add("c", 3);
  const StepView first = h.step();
  EXPECT_EQ(shape(first), (std::vector<std::pair<std::string, int64_t>>{{"a", 3}, {"b", 3}}));
  EXPECT_EQ(h.scheduler.waiting(), 1);
  EXPECT_EQ(h.scheduler.waiting_sequences().front()->id, "c");
}

TEST(Scheduler, SplitsALongPromptUnderTheTokenBudgetAndInterleavesItWithDecode) {
  Harness h(64, 4, {4, 8});
  h.add("short", 2);
  EXPECT_EQ(shape(h.step()), (std::vector<std::pair<std::string, int64_t>>{{"short", 2}}));
  h.add("long", 20);
  // Decode of the running sequence first, then as much of the long prompt as the budget leaves.
  const StepView s2 = h.step();
  EXPECT_EQ(shape(s2), (std::vector<std::pair<std::string, int64_t>>{{"short", 1}, {"long", 7}}));
  EXPECT_FALSE(s2.slices[1].wants_logits);
  EXPECT_EQ(shape(h.step()), (std::vector<std::pair<std::string, int64_t>>{{"short", 1}, {"long", 7}}));
  const StepView s4 = h.step();
  EXPECT_EQ(shape(s4), (std::vector<std::pair<std::string, int64_t>>{{"short", 1}, {"long", 6}}));
  EXPECT_TRUE(s4.slices[1].wants_logits);  // the last chunk samples the first output token
  EXPECT_EQ(shape(h.step()), (std::vector<std::pair<std::string, int64_t>>{{"short", 1}, {"long", 1}}));
}

TEST(Scheduler, AWaitingPromptDoesNotJumpAheadOfALongerOneBeforeIt) {
  Harness h(64, 4, {4, 6});
  h.add("long", 10);
  h.add("short", 2);
  // Step 1: long takes the whole budget; short waits even though it would fit a later budget.
  EXPECT_EQ(shape(h.step()), (std::vector<std::pair<std::string, int64_t>>{{"long", 6}}));
  EXPECT_EQ(shape(h.step()), (std::vector<std::pair<std::string, int64_t>>{{"long", 4}, {"short", 2}}));
}

TEST(Scheduler, PreemptsTheNewestSequenceWhenPagesRunOutAndResumesItByRecompute) {
  // 4 pages of 2: two prompts of 4 tokens hold 2 pages each; the next decode of each needs a third.
  Harness h(4, 2, {4, 16});
  h.add("old", 4);
  h.add("new", 4);
  h.step();  // both prefilled, one token sampled each
  EXPECT_EQ(h.blocks.available_pages(), 0);
  const StepView s2 = h.step();
  // "old" decodes position 4, which needs a third page: "new" is preempted.
  ASSERT_EQ(s2.preempted.size(), 1u);
  EXPECT_EQ(s2.preempted[0], "new");
  EXPECT_EQ(shape(s2), (std::vector<std::pair<std::string, int64_t>>{{"old", 1}}));
  Sequence* preempted = h.scheduler.find("new");
  EXPECT_EQ(preempted->computed, 0);
  EXPECT_EQ(preempted->tokens.size(), 5u);  // its generated token is kept for the recompute
  EXPECT_EQ(h.scheduler.waiting_sequences().front()->id, "new");
  // Nothing is admitted in a step that preempted; "new" waits until pages free up. Its two full
  // prompt pages went to the prefix cache when it was preempted, so only its sampled token is
  // recomputed on resume.
  h.scheduler.remove("old");
  const StepView s3 = h.step();
  EXPECT_EQ(shape(s3), (std::vector<std::pair<std::string, int64_t>>{{"new", 1}}));
  EXPECT_EQ(s3.slices[0].start, 4);
  EXPECT_TRUE(s3.slices[0].wants_logits);
}

TEST(Scheduler, ASequenceThatIsItselfTheNewestPreemptsItself) {
  Harness h(2, 2, {2, 16});
  h.add("a", 4);
  h.step();  // 2 pages, 5 tokens
  h.add("b", 1);
  // b cannot be admitted (no page), a's next decode needs a third page: a is the newest running.
  const StepView s = h.step();
  ASSERT_EQ(s.preempted.size(), 1u);
  EXPECT_EQ(s.preempted[0], "a");
  EXPECT_TRUE(s.slices.empty());
  EXPECT_EQ(h.blocks.used_pages(), 0);
}

TEST(Scheduler, ReusesCachedPrefixPagesButAlwaysComputesTheLastPromptToken) {
  Harness h(16, 4, {4, 64});
  h.add("a", 8, 1);
  EXPECT_EQ(shape(h.step()), (std::vector<std::pair<std::string, int64_t>>{{"a", 8}}));  // finished, pages cached
  h.add("same", 8, 1);
  const StepView s = h.step();
  // Both pages match, but the second holds the last prompt token, so only the first is reused.
  EXPECT_EQ(shape(s), (std::vector<std::pair<std::string, int64_t>>{{"same", 4}}));
  EXPECT_EQ(s.slices[0].start, 4);
}

TEST(Scheduler, RefusesABudgetSmallerThanTheBatch) {
  BlockManager blocks(1, 1);
  EXPECT_THROW(Scheduler(blocks, SchedulerLimits{8, 4}), Error);
}

}  // namespace
}  // namespace kiln::test
