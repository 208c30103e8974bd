#include "runtime/engine_loop.h"

#include <algorithm>
#include <chrono>
#include <exception>
#include <random>

namespace kiln {

namespace {

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// special_tokens.eos_token_id may be one id or a list (Llama 3 instruct lists several).
std::vector<int32_t> eos_ids(const Engine& e) {
  std::vector<int32_t> out;
  const Json& h = e.header();
  if (!h.contains("special_tokens") || !h["special_tokens"].contains("eos_token_id")) return out;
  const Json& v = h["special_tokens"]["eos_token_id"];
  if (v.is_number_integer()) out.push_back(v.get<int32_t>());
  if (v.is_array()) {
    for (const Json& id : v) {
      if (id.is_number_integer()) out.push_back(id.get<int32_t>());
    }
  }
  return out;
}

int32_t bos_id(const Engine& e) {
  const Json& h = e.header();
  if (h.contains("special_tokens") && h["special_tokens"].contains("bos_token_id") &&
      h["special_tokens"]["bos_token_id"].is_number_integer()) {
    return h["special_tokens"]["bos_token_id"].get<int32_t>();
  }
  return -1;
}

ServingLimits resolve_limits(const Engine& e, const ServingOptions& o) {
  ServingLimits l;
  l.max_seq_len = e.limit("max_seq_len");
  l.max_input_len = o.max_input_len > 0 ? o.max_input_len : l.max_seq_len - 1;
  if (l.max_input_len >= l.max_seq_len) {
    throw Error("serving options: maxInputLen (" + std::to_string(l.max_input_len) + ") must be below the engine's maxSeqLen (" +
                std::to_string(l.max_seq_len) + ")");
  }
  l.max_batch_size = o.max_batch_size > 0 ? o.max_batch_size : e.limit("max_batch");
  l.max_batched_tokens = o.max_batched_tokens;
  l.max_queued = o.max_queued;
  if (l.max_queued < 1) throw Error("serving options: maxQueuedRequests must be at least 1");
  l.page_size = o.page_size;
  if (l.page_size < 1) throw Error("serving options: kvPageSize must be at least 1");
  check_kv_sizing_options(KvSizingOptions{o.kv_pages, o.kv_cache_bytes, o.kv_memory_fraction});
  l.eos_token_ids = eos_ids(e);
  l.bos_token_id = bos_id(e);
  return l;
}

// The cache's size and type come from the backend, which measured what it could hold.
ServingLimits with_cache(ServingLimits l, const StepModel& model) {
  l.kv_pages = model.kv_size().pages;
  l.kv_bytes = model.kv_size().bytes;
  l.kv_basis = model.kv_size().basis;
  l.kv_dtype = model.kv_dtype();
  l.backend = model.backend();
  return l;
}

}  // namespace

StepModelOptions step_model_options(const Engine& engine, const ServingOptions& options) {
  const ServingLimits l = resolve_limits(engine, options);
  StepModelOptions s;
  s.threads = options.threads;
  s.kv_dtype = options.kv_dtype;
  s.kv = KvSizingOptions{options.kv_pages, options.kv_cache_bytes, options.kv_memory_fraction};
  s.page_size = l.page_size;
  s.max_seq_len = l.max_seq_len;
  s.max_batch_size = l.max_batch_size;
  s.max_batched_tokens = l.max_batched_tokens;
  return s;
}

EngineLoop::EngineLoop(std::shared_ptr<const Engine> engine, const ServingOptions& options, EventSink sink)
    : EngineLoop(engine, options, make_step_model(engine, step_model_options(*engine, options)), std::move(sink)) {}

EngineLoop::EngineLoop(std::shared_ptr<const Engine> engine, const ServingOptions& options, std::unique_ptr<StepModel> model,
                       EventSink sink)
    : engine_(std::move(engine)),
      limits_(with_cache(resolve_limits(*engine_, options), *model)),
      sink_(std::move(sink)),
      model_(std::move(model)),
      blocks_(limits_.kv_pages, limits_.page_size),
      scheduler_(blocks_, SchedulerLimits{limits_.max_batch_size, limits_.max_batched_tokens}),
      seed_base_(std::random_device{}()),
      sample_pool_(options.threads) {
  stats_.pages_total = limits_.kv_pages;
  stats_.kv_bytes = limits_.kv_bytes;
  thread_ = std::thread([this] { run(); });
}

EngineLoop::~EngineLoop() { close(); }

void EngineLoop::submit(GenerationRequest r) {
  const auto prompt_len = static_cast<int64_t>(r.prompt.size());
  if (r.id.empty()) throw Error("request: id must be a non-empty string");
  if (prompt_len == 0) throw LimitError("request " + r.id + ": promptTokens is empty", "promptTokens");
  const int64_t vocab = engine_->config().vocab_size;
  for (int32_t t : r.prompt) {
    if (t < 0 || t >= vocab) {
      throw LimitError("request " + r.id + ": prompt token id " + std::to_string(t) + " is outside the vocabulary (" +
                           std::to_string(vocab) + ")",
                       "promptTokens");
    }
  }
  if (prompt_len > limits_.max_input_len) {
    throw LimitError("request " + r.id + ": the prompt has " + std::to_string(prompt_len) +
                         " tokens, more than the engine's maxInputLen (" + std::to_string(limits_.max_input_len) + ")",
                     "promptTokens");
  }
  if (r.max_tokens < 1) throw LimitError("request " + r.id + ": maxTokens must be at least 1", "maxTokens");
  if (prompt_len + r.max_tokens > limits_.max_seq_len) {
    throw LimitError("request " + r.id + ": prompt (" + std::to_string(prompt_len) + ") + maxTokens (" +
                         std::to_string(r.max_tokens) + ") exceeds the engine's maxSeqLen (" +
                         std::to_string(limits_.max_seq_len) + ")",
                     "maxTokens");
  }
  Sampler check(r.sampling, 0);  // throws on bad parameters before anything is queued
  std::lock_guard<std::mutex> lock(mutex_);
  if (closed_) throw Error("request " + r.id + ": the engine is closed");
  if (!stats_.healthy) throw Error("request " + r.id + ": the engine loop has failed");
  if (live_ids_.count(r.id)) throw Error("request " + r.id + ": the id is already in flight");
  if (queued_ >= limits_.max_queued) {
    throw OverloadError("request " + r.id + ": " + std::to_string(queued_) + " requests are already waiting (maxQueuedRequests " +
                        std::to_string(limits_.max_queued) + ")");
  }
  live_ids_.insert(r.id);
  ++queued_;
  incoming_.push_back(std::move(r));
  wake_.notify_one();
}

void EngineLoop::cancel(const std::string& id) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!live_ids_.count(id)) return;
  cancels_.push_back(id);
  wake_.notify_one();
}

ServingStats EngineLoop::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void EngineLoop::close() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    closed_ = true;
    stopping_ = true;
    wake_.notify_one();
  }
  if (thread_.joinable()) thread_.join();
  // The backend's memory (on the GPU, most of the device for the KV cache) goes back now rather
  // than when the owner drops the loop: a closed engine may linger until JS collects its handle.
  model_.reset();
}

void EngineLoop::run() {
  std::vector<GenerationRequest> fresh;
  std::vector<std::string> cancels;
  bool failed = false;
  for (;;) {
    bool stopping;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] {
        return stopping_ || !incoming_.empty() || !cancels_.empty() ||
               (!failed && scheduler_.running() + scheduler_.waiting() > 0);
      });
      fresh.swap(incoming_);
      cancels.swap(cancels_);
      stopping = stopping_;
    }
    std::vector<TokenEvent> events;
    try {
      events = iterate(fresh, cancels, stopping || failed);
    } catch (const std::exception& e) {
      // A failed step leaves the cache in an unknown state: end every request with the error and
      // refuse new ones; /healthz reports the loop unhealthy.
      failed = true;
      events.clear();
      std::vector<std::string> ids;
      for (Sequence* s : scheduler_.running_sequences()) ids.push_back(s->id);
      for (Sequence* s : scheduler_.waiting_sequences()) ids.push_back(s->id);
      for (const std::string& id : ids) {
        TokenEvent ev;
        ev.id = id;
        ev.finished = true;
        ev.error = std::string("engine step failed: ") + e.what();
        events.push_back(std::move(ev));
        scheduler_.remove(id);
      }
      std::lock_guard<std::mutex> lock(mutex_);
      stats_.healthy = false;
      for (const std::string& id : ids) live_ids_.erase(id);
    }
    fresh.clear();
    cancels.clear();
    publish_stats();
    if (!events.empty()) sink_(std::move(events));
    if (stopping) return;
  }
}

std::vector<TokenEvent> EngineLoop::iterate(std::vector<GenerationRequest>& fresh, std::vector<std::string>& cancels,
                                            bool stopping) {
  std::vector<TokenEvent> events;
  for (GenerationRequest& r : fresh) {
    std::vector<int32_t> stops = std::move(r.stop_token_ids);
    stops.insert(stops.end(), limits_.eos_token_ids.begin(), limits_.eos_token_ids.end());
    // Requests without a seed still get independent streams; a seed makes the stream the request's own.
    Sampler sampler(r.sampling, seed_base_ + 0x9e3779b97f4a7c15ULL * (next_arrival_ + 1));
    auto s = std::make_unique<Sequence>(r.id, std::move(r.prompt), r.max_tokens, std::move(stops), std::move(sampler));
    s->arrival = next_arrival_++;
    scheduler_.add(std::move(s));
  }
  if (stopping) {
    for (Sequence* s : scheduler_.running_sequences()) cancels.push_back(s->id);
    for (Sequence* s : scheduler_.waiting_sequences()) cancels.push_back(s->id);
  }
  for (const std::string& id : cancels) {
    if (Sequence* s = scheduler_.find(id)) finish(s, FinishReason::Cancelled, events, nullptr);
  }
  if (!stopping) run_step(events);
  return events;
}

void EngineLoop::run_step(std::vector<TokenEvent>& events) {
  const StepPlan plan = scheduler_.schedule();
  if (plan.slices.empty()) return;
  ForwardBatch batch;
  for (const ScheduledSlice& slice : plan.slices) {
    batch.add(slice.sequence->tokens.data() + slice.start, slice.n, slice.start, slice.sequence->block_table.data(),
              slice.wants_logits);
  }
  const int64_t vocab = model_->config().vocab_size;
  const int64_t rows = batch.logit_rows();
  std::vector<Sequence*>& row_seq = row_sequences_;
  row_seq.clear();
  for (const ScheduledSlice& slice : plan.slices) {
    if (slice.wants_logits) row_seq.push_back(slice.sequence);
  }
  // Where the backend can, a greedy row takes its argmax and a sampled row its draw on the device
  // (on the GPU: no logits copy); only rows with penalties or logprobs (every row on the CPU)
  // bring their logits to the host for their Sampler. A device draw takes the uniform number the
  // Sampler would have drawn, so the request's stream advances exactly as on the host.
  const bool device_greedy = model_->greedy_without_logits();
  const bool device_sample = model_->samples_without_logits();
  row_requests_.assign(static_cast<size_t>(rows), RowRequest{});
  std::vector<int>& sampled = sampled_rows_;
  sampled.clear();
  for (size_t r = 0; r < row_seq.size(); ++r) {
    Sampler& sampler = row_seq[r]->sampler;
    RowRequest& q = row_requests_[r];
    const SamplingParams& p = sampler.params();
    const bool raw = sampler.raw_logits_suffice();
    if (raw && device_greedy && p.temperature == 0.0f) {
      q.want = RowWant::Greedy;
    } else if (raw && device_sample && p.temperature > 0.0f) {
      q.want = RowWant::Sample;
      q.draw = SampleDraw{p.temperature, p.top_k, p.top_p, p.min_p, sampler.next_uniform()};
    } else {
      sampled.push_back(static_cast<int>(r));
    }
  }
  tokens_.resize(static_cast<size_t>(rows));
  if (!sampled.empty()) logits_.resize(static_cast<size_t>(rows * vocab));
  model_->forward(batch, row_requests_.data(), tokens_.data(), sampled.empty() ? nullptr : logits_.data());
  scheduler_.complete(plan);

  choices_.assign(row_seq.size(), TokenChoice{});
  for (size_t r = 0; r < row_seq.size(); ++r) {
    if (row_requests_[r].want != RowWant::Logits) choices_[r].token = tokens_[r];
  }
  // A throw escaping a pool worker would end the process, so each row's error is kept and the
  // first in row order is rethrown on the loop thread, before any row's token is applied.
  // The job captures only `this` and vocab (the rest are members) so that it fits std::function's
  // small buffer: a wider capture would allocate once per step.
  sample_errors_.assign(sampled.size(), nullptr);
  sample_pool_.run(static_cast<int>(sampled.size()), sample_pool_.size(), [this, vocab](int i) {
    const auto r = static_cast<size_t>(sampled_rows_[static_cast<size_t>(i)]);
    Sequence* s = row_sequences_[r];
    try {
      choices_[r] = s->sampler.choose(logits_.data() + static_cast<int64_t>(r) * vocab, vocab, s->tokens, s->prompt_len);
    } catch (...) {
      sample_errors_[static_cast<size_t>(i)] = std::current_exception();
    }
  });
  for (const std::exception_ptr& e : sample_errors_) {
    if (e) std::rethrow_exception(e);
  }

  size_t row = 0;
  for (Sequence* s : row_seq) {
    TokenEvent ev;
    ev.id = s->id;
    ev.with_logprobs = s->sampler.params().logprobs >= 0;
    if (s->generated() == 0) ev.cached_prompt_tokens = s->cached_prompt_tokens;
    const int32_t token = choices_[row].token;
    ev.tokens.push_back(std::move(choices_[row++]));  // moved, not copied: `top` holds the logprobs
    s->tokens.push_back(token);
    ++stats_generated_;
    const bool stop = std::find(s->stop_token_ids.begin(), s->stop_token_ids.end(), token) != s->stop_token_ids.end();
    if (stop) {
      finish(s, FinishReason::Stop, events, &ev);
    } else if (s->generated() >= s->max_tokens || static_cast<int64_t>(s->tokens.size()) >= limits_.max_seq_len) {
      finish(s, FinishReason::Length, events, &ev);
    } else {
      events.push_back(std::move(ev));
    }
  }
  ++steps_;
  preemptions_ += static_cast<int64_t>(plan.preempted.size());
}

void EngineLoop::finish(Sequence* s, FinishReason reason, std::vector<TokenEvent>& events, TokenEvent* event) {
  TokenEvent ev;
  if (event) ev = std::move(*event);
  ev.id = s->id;
  ev.finished = true;
  ev.reason = reason;
  const std::string id = s->id;
  scheduler_.remove(id);  // pages back before the caller hears of the end
  {
    std::lock_guard<std::mutex> lock(mutex_);
    live_ids_.erase(id);
  }
  events.push_back(std::move(ev));
}

void EngineLoop::publish_stats() {
  const double t = now_seconds();
  rate_window_.emplace_back(t, stats_generated_);
  while (rate_window_.size() > 2 && rate_window_.front().first < t - 5.0) rate_window_.pop_front();
  const double span = t - rate_window_.front().first;
  int64_t never_admitted = 0;
  for (const Sequence* s : scheduler_.waiting_sequences()) never_admitted += s->admitted_before ? 0 : 1;

  std::lock_guard<std::mutex> lock(mutex_);
  stats_.running = scheduler_.running();
  stats_.running_peak = std::max(stats_.running_peak, stats_.running);
  stats_.waiting = scheduler_.waiting() + static_cast<int64_t>(incoming_.size());
  stats_.pages_used = blocks_.used_pages();
  stats_.pages_cached = blocks_.cached_pages();
  stats_.pages_used_peak = std::max(stats_.pages_used_peak, blocks_.used_pages());
  stats_.tokens_per_second = span > 0 ? static_cast<double>(stats_generated_ - rate_window_.front().second) / span : 0.0;
  stats_.prefix_cache_hit_rate = blocks_.prefix_lookup_tokens() > 0
                                     ? static_cast<double>(blocks_.prefix_hit_tokens()) / static_cast<double>(blocks_.prefix_lookup_tokens())
                                     : 0.0;
  stats_.generated_tokens = stats_generated_;
  stats_.steps = steps_;
  stats_.preemptions = preemptions_;
  queued_ = never_admitted + static_cast<int64_t>(incoming_.size());
}

}  // namespace kiln
