// The serving loop end to end on real tiny engines: batched greedy output equals each request run
// alone, for every architecture; preemption, prefix reuse, cancel, limits and overload.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>

#include "architectures.h"
#include "build_helpers.h"
#include "core/error.h"
#include "engine/engine.h"
#include "runtime/engine_loop.h"
#include "runtime/generate.h"

namespace kiln::test {
namespace {

constexpr int32_t kEos = 2;  // tiny_config's eos_token_id

struct Outcome {
  std::vector<int32_t> tokens;
  bool finished = false;
  FinishReason reason = FinishReason::Stop;
  int64_t cached_prompt_tokens = -1;
  std::string error;
};

// Collects events from the loop thread; waits for requests to finish.
class Collector {
 public:
  EventSink sink() {
    return [this](std::vector<TokenEvent>&& events) {
      if (on_event) on_event(events);
      std::lock_guard<std::mutex> lock(mutex_);
      for (TokenEvent& e : events) {
        Outcome& o = outcomes_[e.id];
        for (const TokenChoice& c : e.tokens) o.tokens.push_back(c.token);
        if (e.cached_prompt_tokens >= 0) o.cached_prompt_tokens = e.cached_prompt_tokens;
        if (e.finished) {
          o.finished = true;
          o.reason = e.reason;
          o.error = e.error;
          ++finished_;
        }
      }
      changed_.notify_all();
    };
  }

  // Waits (a generous bound, only so a bug fails instead of hanging) for `count` finished requests.
  std::map<std::string, Outcome> wait(size_t count) {
    std::unique_lock<std::mutex> lock(mutex_);
    EXPECT_TRUE(changed_.wait_for(lock, std::chrono::seconds(120), [&] { return finished_ >= count; }))
        << finished_ << " of " << count << " requests finished";
    return outcomes_;
  }
  Outcome get(const std::string& id) {
    std::lock_guard<std::mutex> lock(mutex_);
    return outcomes_[id];
  }

  std::function<void(const std::vector<TokenEvent>&)> on_event;

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::map<std::string, Outcome> outcomes_;
  size_t finished_ = 0;
};

std::shared_ptr<const Engine> tiny_engine(const TinySpec& spec, const std::string& name) {
  return Engine::load(build_engine(write_tiny_checkpoint(name, spec), Precision::FP32));
}

GenerationRequest request(const std::string& id, std::vector<int32_t> prompt, int64_t max_tokens) {
  GenerationRequest r;
  r.id = id;
  r.prompt = std::move(prompt);
  r.max_tokens = max_tokens;
  return r;
}

std::vector<int32_t> prompt_of(int i, int64_t length, int64_t vocab) {
  std::vector<int32_t> p;
  for (int64_t k = 0; k < length; ++k) p.push_back(static_cast<int32_t>((i * 13 + k * 5 + 3) % vocab));
  return p;
}

// What greedy generation of one request alone gives, cut after the first eos as the loop stops there.
std::vector<int32_t> alone(Model& model, const std::vector<int32_t>& prompt, int64_t max_tokens) {
  std::vector<int32_t> t = generate_greedy(model, prompt, max_tokens).tokens;
  const auto eos = std::find(t.begin(), t.end(), kEos);
  if (eos != t.end()) t.erase(eos + 1, t.end());
  return t;
}

// The first prompt of `length` (from prompt_of(i, ...), i >= *next) whose greedy run of `steps`
// tokens has no eos, so a request with it runs until max_tokens (or a cancel).
std::vector<int32_t> prompt_without_eos(Model& model, int64_t length, int64_t steps, int& next) {
  for (; next < 10000; ++next) {
    std::vector<int32_t> p = prompt_of(next, length, model.config().vocab_size);
    const std::vector<int32_t> t = generate_greedy(model, p, steps).tokens;
    if (std::find(t.begin(), t.end(), kEos) == t.end()) {
      ++next;
      return p;
    }
  }
  throw Error("no prompt without eos found");
}

TEST(Serving, ThirtyTwoConcurrentRequestsGiveTheTokensEachGivesAloneForEveryArchitecture) {
  for (const auto& c : tiny_architectures()) {
    SCOPED_TRACE(c.name);
    auto engine = tiny_engine(c.spec, c.name);
    ThreadPool pool(2);
    Model model(engine, pool);
    ServingOptions o;
    o.max_batch_size = 32;
    o.max_batched_tokens = 64;  // long prompts are split and interleaved with decode
    o.threads = 2;
    Collector collector;
    EngineLoop loop(engine, o, collector.sink());
    std::map<std::string, std::vector<int32_t>> want;
    std::vector<GenerationRequest> requests;
    for (int i = 0; i < 32; ++i) {
      const std::string id = "r" + std::to_string(i);
      const std::vector<int32_t> prompt = prompt_of(i, 1 + (i * 7) % 60, c.spec.vocab);
      const int64_t max_tokens = 4 + i % 12;
      want[id] = alone(model, prompt, max_tokens);
      requests.push_back(request(id, prompt, max_tokens));
    }
    for (GenerationRequest& r : requests) loop.submit(std::move(r));
    const auto got = collector.wait(32);
    for (const auto& [id, tokens] : want) {
      EXPECT_EQ(got.at(id).tokens, tokens) << id;
      EXPECT_EQ(got.at(id).reason, tokens.back() == kEos ? FinishReason::Stop : FinishReason::Length) << id;
    }
    EXPECT_EQ(loop.stats().pages_used, 0);
    EXPECT_GT(loop.stats().pages_used_peak, 0);
    EXPECT_GT(loop.stats().running_peak, 8);  // they really ran side by side
  }
}

TEST(Serving, PreemptedSequencesResumeWithTheTokensOfAnUninterruptedRun) {
  TinySpec spec;
  auto engine = tiny_engine(spec, "preempt");
  ThreadPool pool(2);
  Model model(engine, pool);
  ServingOptions o;
  o.max_batch_size = 8;
  o.kv_pages = 8;  // one sequence of max_seq_len (128 / 16): eight requests must take turns
  o.threads = 2;
  Collector collector;
  EngineLoop loop(engine, o, collector.sink());
  std::map<std::string, std::vector<int32_t>> want;
  std::vector<GenerationRequest> requests;
  int next = 0;
  for (int i = 0; i < 8; ++i) {
    const std::string id = "p" + std::to_string(i);
    const std::vector<int32_t> prompt = prompt_without_eos(model, 20 + i * 3, 40, next);
    want[id] = alone(model, prompt, 40);
    requests.push_back(request(id, prompt, 40));
  }
  for (GenerationRequest& r : requests) loop.submit(std::move(r));
  const auto got = collector.wait(8);
  for (const auto& [id, tokens] : want) EXPECT_EQ(got.at(id).tokens, tokens) << id;
  EXPECT_GT(loop.stats().preemptions, 0);
  EXPECT_EQ(loop.stats().pages_used, 0);
}

TEST(Serving, ASharedSystemPromptIsServedFromThePrefixCache) {
  TinySpec spec;
  auto engine = tiny_engine(spec, "prefix");
  ThreadPool pool(2);
  Model model(engine, pool);
  ServingOptions o;
  o.threads = 2;
  Collector collector;
  EngineLoop loop(engine, o, collector.sink());
  std::vector<int32_t> system = prompt_of(99, 40, spec.vocab);
  std::vector<int32_t> first = system, second = system;
  first.insert(first.end(), {5, 6, 7});
  second.insert(second.end(), {8, 9});
  loop.submit(request("first", first, 6));
  collector.wait(1);
  loop.submit(request("second", second, 6));
  const auto got = collector.wait(2);
  EXPECT_EQ(got.at("first").cached_prompt_tokens, 0);
  EXPECT_EQ(got.at("second").cached_prompt_tokens, 32);  // two full pages of 16
  EXPECT_EQ(got.at("second").tokens, alone(model, second, 6));
  EXPECT_GT(loop.stats().prefix_cache_hit_rate, 0.0);
}

TEST(Serving, Bf16KvCacheBatchedEqualsAloneToo) {
  TinySpec spec;
  auto engine = tiny_engine(spec, "bf16kv");
  ServingOptions o;
  o.kv_dtype = DType::BF16;
  o.max_batch_size = 16;
  o.max_batched_tokens = 48;
  o.threads = 2;
  std::map<std::string, std::vector<int32_t>> one_by_one;
  {
    Collector collector;
    EngineLoop loop(engine, o, collector.sink());
    for (int i = 0; i < 16; ++i) {
      loop.submit(request("b" + std::to_string(i), prompt_of(i, 3 + i * 5, spec.vocab), 10));
      collector.wait(static_cast<size_t>(i + 1));
    }
    for (const auto& [id, outcome] : collector.wait(16)) one_by_one[id] = outcome.tokens;
  }
  Collector collector;
  EngineLoop loop(engine, o, collector.sink());
  for (int i = 0; i < 16; ++i) loop.submit(request("b" + std::to_string(i), prompt_of(i, 3 + i * 5, spec.vocab), 10));
  for (const auto& [id, outcome] : collector.wait(16)) EXPECT_EQ(outcome.tokens, one_by_one[id]) << id;
}

TEST(Serving, SeededSamplingIsReproducibleWhateverRunsBesideIt) {
  TinySpec spec;
  auto engine = tiny_engine(spec, "seeded");
  ServingOptions o;
  o.threads = 2;
  GenerationRequest r = request("s", prompt_of(1, 12, spec.vocab), 20);
  r.sampling.temperature = 1.0f;
  r.sampling.top_p = 0.9f;
  r.sampling.has_seed = true;
  r.sampling.seed = 1234;
  std::vector<int32_t> lone;
  {
    Collector collector;
    EngineLoop loop(engine, o, collector.sink());
    loop.submit(r);
    lone = collector.wait(1).at("s").tokens;
  }
  Collector collector;
  EngineLoop loop(engine, o, collector.sink());
  for (int i = 0; i < 5; ++i) loop.submit(request("other" + std::to_string(i), prompt_of(i, 30, spec.vocab), 20));
  loop.submit(r);
  EXPECT_EQ(collector.wait(6).at("s").tokens, lone);
}

// Each step's sampled rows are chosen in parallel on the loop's pool; a row uses only its own
// sampler, so neither the thread count nor what runs beside a request may change its tokens.
TEST(Serving, ConcurrentSeededSampledRequestsGiveTheTokensEachGivesAloneWhateverTheThreadCount) {
  TinySpec spec;
  auto engine = tiny_engine(spec, "sampled-threads");
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 24; ++i) {
    GenerationRequest r = request("q" + std::to_string(i), prompt_of(i, 1 + (i * 7) % 40, spec.vocab), 6 + i % 10);
    r.sampling.temperature = 0.7f + 0.1f * static_cast<float>(i % 6);
    if (i % 4 == 1) r.sampling.top_p = 0.9f;
    if (i % 4 == 2) r.sampling.top_k = 20;
    if (i % 4 == 3) r.sampling.min_p = 0.05f;
    if (i % 3 == 0) r.sampling.frequency_penalty = 0.5f;
    if (i % 5 == 0) r.sampling.repetition_penalty = 1.3f;
    if (i % 2 == 0) r.sampling.logprobs = 3;
    r.sampling.has_seed = true;
    r.sampling.seed = 1000 + static_cast<uint64_t>(i);
    requests.push_back(r);
  }
  ServingOptions o;
  o.max_batch_size = 24;
  o.max_batched_tokens = 64;
  std::map<std::string, std::vector<int32_t>> lone;
  o.threads = 1;
  for (const GenerationRequest& r : requests) {
    Collector collector;
    EngineLoop loop(engine, o, collector.sink());
    loop.submit(r);
    lone[r.id] = collector.wait(1).at(r.id).tokens;
  }
  std::set<std::vector<int32_t>> distinct;
  for (const auto& [id, tokens] : lone) distinct.insert(tokens);
  EXPECT_GT(distinct.size(), requests.size() / 2);  // the draws really differ from request to request
  for (int threads : {1, 2, 4}) {
    SCOPED_TRACE(threads);
    o.threads = threads;
    Collector collector;
    EngineLoop loop(engine, o, collector.sink());
    for (const GenerationRequest& r : requests) loop.submit(r);
    const auto got = collector.wait(requests.size());
    for (const auto& [id, tokens] : lone) EXPECT_EQ(got.at(id).tokens, tokens) << id;
    EXPECT_GT(loop.stats().running_peak, 8);
  }
}

TEST(Serving, StopTokenIdsEndARequestAfterEmittingTheStopToken) {
  TinySpec spec;
  auto engine = tiny_engine(spec, "stop");
  ThreadPool pool(2);
  Model model(engine, pool);
  int next = 0;
  const std::vector<int32_t> prompt = prompt_without_eos(model, 10, 8, next);
  const std::vector<int32_t> free_run = generate_greedy(model, prompt, 8).tokens;
  ServingOptions o;
  o.threads = 2;
  Collector collector;
  EngineLoop loop(engine, o, collector.sink());
  GenerationRequest r = request("stop", prompt, 8);
  r.stop_token_ids = {free_run[2]};
  loop.submit(r);
  const Outcome got = collector.wait(1).at("stop");
  const auto first_stop = std::find(free_run.begin(), free_run.end(), free_run[2]);
  EXPECT_EQ(got.tokens, std::vector<int32_t>(free_run.begin(), first_stop + 1));
  EXPECT_EQ(got.reason, FinishReason::Stop);
}

TEST(Serving, CancelEndsTheRequestAndFreesItsPagesBeforeTheLastEvent) {
  TinySpec spec;
  auto engine = tiny_engine(spec, "cancel");
  ServingOptions o;
  o.threads = 2;
  Collector collector;
  std::mutex m;
  std::condition_variable cv;
  bool first_token = false;
  collector.on_event = [&](const std::vector<TokenEvent>&) {
    std::lock_guard<std::mutex> lock(m);
    first_token = true;
    cv.notify_all();
  };
  ThreadPool pool(1);
  Model model(engine, pool);
  int next = 0;
  const std::vector<int32_t> prompt = prompt_without_eos(model, 40, 80, next);
  EngineLoop loop(engine, o, collector.sink());
  loop.submit(request("c", prompt, 80));
  {
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return first_token; });
  }
  loop.cancel("c");
  const Outcome got = collector.wait(1).at("c");
  if (got.reason != FinishReason::Cancelled) GTEST_SKIP() << "the request finished before the cancel arrived";
  EXPECT_LT(got.tokens.size(), 80u);
  EXPECT_EQ(loop.stats().pages_used, 0);
  loop.cancel("c");  // a finished id is ignored
}

TEST(Serving, LimitsAreEnforcedWithDistinctErrors) {
  TinySpec spec;
  auto engine = tiny_engine(spec, "limits");
  ServingOptions o;
  o.max_input_len = 100;
  o.threads = 1;
  Collector collector;
  EngineLoop loop(engine, o, collector.sink());
  try {
    loop.submit(request("long", std::vector<int32_t>(101, 1), 1));
    FAIL() << "a prompt over maxInputLen was accepted";
  } catch (const LimitError& e) {
    EXPECT_EQ(e.field(), "promptTokens");
  }
  try {
    loop.submit(request("total", std::vector<int32_t>(100, 1), 29));  // 129 > max_seq_len 128
    FAIL() << "prompt + maxTokens over maxSeqLen was accepted";
  } catch (const LimitError& e) {
    EXPECT_EQ(e.field(), "maxTokens");
  }
  EXPECT_THROW(loop.submit(request("vocab", {static_cast<int32_t>(spec.vocab)}, 1)), LimitError);
  EXPECT_THROW(loop.submit(request("empty", {}, 1)), LimitError);
  GenerationRequest bad = request("sampling", {1}, 1);
  bad.sampling.top_p = 2.0f;
  EXPECT_THROW(loop.submit(bad), Error);
}

TEST(Serving, AFullQueueRefusesWithAnOverloadError) {
  TinySpec spec;
  auto engine = tiny_engine(spec, "overload");
  ServingOptions o;
  o.max_batch_size = 1;
  o.max_queued = 2;
  o.threads = 1;
  Collector collector;
  // The first event parks the loop thread until the queue has been filled, so nothing is admitted
  // meanwhile and the count the loop published (one running, none waiting) stays put.
  std::mutex m;
  std::condition_variable cv;
  bool parked = false, release = false;
  collector.on_event = [&](const std::vector<TokenEvent>&) {
    std::unique_lock<std::mutex> lock(m);
    if (parked) return;
    parked = true;
    cv.notify_all();
    cv.wait(lock, [&] { return release; });
  };
  EngineLoop loop(engine, o, collector.sink());
  loop.submit(request("running", {1, 3, 4}, 4));
  {
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return parked; });
  }
  loop.submit(request("q1", {1, 3}, 2));
  loop.submit(request("q2", {1, 3}, 2));
  EXPECT_THROW(loop.submit(request("q3", {1, 3}, 2)), OverloadError);
  EXPECT_THROW(loop.submit(request("q1", {1}, 1)), Error);  // live ids are unique
  {
    std::lock_guard<std::mutex> lock(m);
    release = true;
  }
  cv.notify_all();
  const auto got = collector.wait(3);
  EXPECT_TRUE(got.at("q2").finished);
}

// One request runs at a time, so at the close the last of four is still queued unless the loop got
// through three whole requests first (a test thread descheduled for that long on a loaded machine):
// that run shows nothing and the test runs again on a fresh loop. On a run where it was queued, every
// request either ended cancelled short of its tokens or had finished on its own before the close.
TEST(Serving, CloseCancelsEverythingInFlight) {
  TinySpec spec;
  auto engine = tiny_engine(spec, "close");
  ServingOptions o;
  o.threads = 1;
  o.max_batch_size = 1;
  constexpr int64_t kMaxTokens = 100;
  std::map<std::string, Outcome> got;
  for (int attempt = 0; attempt < 5; ++attempt) {
    Collector collector;
    EngineLoop loop(engine, o, collector.sink());
    for (int i = 0; i < 4; ++i) loop.submit(request("x" + std::to_string(i), prompt_of(i, 20, spec.vocab), kMaxTokens));
    loop.close();
    got = collector.wait(4);
    EXPECT_THROW(loop.submit(request("late", {1}, 1)), Error);
    if (got.at("x3").reason == FinishReason::Cancelled && got.at("x3").tokens.empty()) break;
  }
  ASSERT_TRUE(got.at("x3").reason == FinishReason::Cancelled && got.at("x3").tokens.empty())
      << "in 5 runs the loop always got to the last request before the close";
  for (const auto& [id, outcome] : got) {
    SCOPED_TRACE(id);
    EXPECT_TRUE(outcome.finished);
    if (outcome.reason == FinishReason::Cancelled) {
      EXPECT_LT(static_cast<int64_t>(outcome.tokens.size()), kMaxTokens);
    } else {
      // Finished before the close: all its tokens, or an eos.
      EXPECT_TRUE((outcome.reason == FinishReason::Length && static_cast<int64_t>(outcome.tokens.size()) == kMaxTokens) ||
                  (outcome.reason == FinishReason::Stop && !outcome.tokens.empty() && outcome.tokens.back() == kEos));
    }
  }
}

}  // namespace
}  // namespace kiln::test
