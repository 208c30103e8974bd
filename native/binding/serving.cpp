// The serving runtime for JS: loading (file read, section checksums, target fingerprint, sha256 of
// the file; checksums and hash skipped for a file the caller verified, its digest reported) runs on
// a libuv worker; the engine loop then runs on its own native thread and hands every step's token events to
// JS through one thread-safe function. JS only submits, cancels, reads stats and closes; it never
// drives the per-token loop.
#include "serving.h"

#include <cmath>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/sha256.h"
#include "engine/engine.h"
#include "runtime/engine_loop.h"
#include "runtime/kv_cache.h"

namespace kiln_binding {

namespace {

// JS-thread state shared with the event callback: requests the engine still owes events to. The
// thread-safe function keeps Node's event loop alive only while that count is non-zero, so an idle
// engine does not hold the process open and a busy one does.
struct Delivery {
  int64_t live = 0;
  napi_threadsafe_function fn = nullptr;
};

void deliver(Napi::Env env, Napi::Function on_events, Delivery* delivery, std::vector<kiln::TokenEvent>* data);

using EventFn = Napi::TypedThreadSafeFunction<Delivery, std::vector<kiln::TokenEvent>, deliver>;

const char* reason_name(kiln::FinishReason r) {
  switch (r) {
    case kiln::FinishReason::Stop: return "stop";
    case kiln::FinishReason::Length: return "length";
    case kiln::FinishReason::Cancelled: return "cancelled";
  }
  return "stop";
}

Napi::Object choice_logprob(Napi::Env env, int32_t token, float logprob) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("token", token);
  o.Set("logprob", logprob);
  return o;
}

void deliver(Napi::Env env, Napi::Function on_events, Delivery* delivery, std::vector<kiln::TokenEvent>* data) {
  std::unique_ptr<std::vector<kiln::TokenEvent>> events(data);
  if (env == nullptr || on_events.IsEmpty()) return;  // the environment is shutting down
  Napi::Array out = Napi::Array::New(env, events->size());
  int64_t finished = 0;
  for (size_t i = 0; i < events->size(); ++i) {
    const kiln::TokenEvent& e = (*events)[i];
    Napi::Object o = Napi::Object::New(env);
    o.Set("id", e.id);
    Napi::Array tokens = Napi::Array::New(env, e.tokens.size());
    for (size_t t = 0; t < e.tokens.size(); ++t) tokens.Set(static_cast<uint32_t>(t), e.tokens[t].token);
    o.Set("tokens", tokens);
    if (e.with_logprobs) {
      Napi::Array lps = Napi::Array::New(env, e.tokens.size());
      for (size_t t = 0; t < e.tokens.size(); ++t) {
        const kiln::TokenChoice& c = e.tokens[t];
        Napi::Object lp = choice_logprob(env, c.token, c.logprob);
        Napi::Array top = Napi::Array::New(env, c.top.size());
        for (size_t k = 0; k < c.top.size(); ++k) top.Set(static_cast<uint32_t>(k), choice_logprob(env, c.top[k].first, c.top[k].second));
        lp.Set("top", top);
        lps.Set(static_cast<uint32_t>(t), lp);
      }
      o.Set("logprobs", lps);
    }
    if (e.cached_prompt_tokens >= 0) o.Set("cachedPromptTokens", Napi::Number::New(env, static_cast<double>(e.cached_prompt_tokens)));
    if (e.finished) {
      ++finished;
      if (e.error.empty()) o.Set("finishReason", reason_name(e.reason));
      else o.Set("error", e.error);
    }
    out.Set(static_cast<uint32_t>(i), o);
  }
  delivery->live -= finished;
  if (finished > 0 && delivery->live == 0) napi_unref_threadsafe_function(env, delivery->fn);
  on_events.Call({out});
}

// Owned by the JS handle; the loop lives in a shared_ptr so close() can join it off the JS thread.
struct HandleState {
  std::shared_ptr<kiln::EngineLoop> loop;
  std::shared_ptr<const kiln::Engine> engine;
  std::string sha256;
  EventFn events;
  Delivery delivery;
  bool released = false;

  // JS thread: after the loop is closed, no event can be produced any more.
  void release_events() {
    if (released) return;
    released = true;
    events.Release();
  }
};

class ServingHandle : public Napi::ObjectWrap<ServingHandle> {
 public:
  static Napi::FunctionReference* constructor;

  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "ServingEngineHandle",
                       {InstanceMethod("info", &ServingHandle::Info), InstanceMethod("tokenizerJson", &ServingHandle::TokenizerJson),
                        InstanceMethod("submit", &ServingHandle::Submit), InstanceMethod("cancel", &ServingHandle::Cancel),
                        InstanceMethod("stats", &ServingHandle::Stats), InstanceMethod("close", &ServingHandle::Close)});
  }

  explicit ServingHandle(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ServingHandle>(info) {}

  ~ServingHandle() override {
    // Garbage-collected without close(): stop the thread here (joins at most one step).
    if (state_ && state_->loop) state_->loop->close();
    if (state_) state_->release_events();
  }

  void adopt(std::unique_ptr<HandleState> state) { state_ = std::move(state); }

 private:
  kiln::EngineLoop& loop(Napi::Env env) {
    if (!state_ || !state_->loop) throw Napi::Error::New(env, "the engine is closed");
    return *state_->loop;
  }

  Napi::Value Info(const Napi::CallbackInfo& info) {
    const kiln::ServingLimits& l = loop(info.Env()).limits();
    kiln::Json out{{"header", state_->engine->header()},
                   {"sha256", state_->sha256},
                   {"limits",
                    {{"maxInputLen", l.max_input_len}, {"maxSeqLen", l.max_seq_len}, {"maxBatchSize", l.max_batch_size},
                     {"maxNumBatchedTokens", l.max_batched_tokens}, {"maxQueuedRequests", l.max_queued},
                     {"kvPageSize", l.page_size}, {"kvCachePages", l.kv_pages}, {"kvCacheBytes", l.kv_bytes},
                     {"kvCacheSizedBy", l.kv_basis}, {"kvCacheDtype", kiln::kv_cache_dtype_name(l.kv_dtype)},
                     {"backend", l.backend}}},
                   {"eosTokenIds", l.eos_token_ids}};
    if (l.bos_token_id >= 0) out["bosTokenId"] = l.bos_token_id;
    return Napi::String::New(info.Env(), out.dump());
  }

  Napi::Value TokenizerJson(const Napi::CallbackInfo& info) {
    loop(info.Env());
    const kiln::TensorView* t = state_->engine->find("tokenizer.json");
    if (!t) return info.Env().Null();
    return Napi::String::New(info.Env(), reinterpret_cast<const char*>(t->data), t->bytes);
  }

  Napi::Value Submit(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    kiln::EngineLoop& l = loop(env);
    if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "submit(request): request must be an object");
    kiln::GenerationRequest r = request_from(info[0].As<Napi::Object>());
    try {
      l.submit(std::move(r));
    } catch (const kiln::LimitError& e) {
      Napi::Error err = Napi::Error::New(env, e.what());
      err.Set("code", "KILN_LIMIT");
      err.Set("field", e.field());
      throw err;
    } catch (const kiln::OverloadError& e) {
      Napi::Error err = Napi::Error::New(env, e.what());
      err.Set("code", "KILN_OVERLOADED");
      throw err;
    } catch (const std::exception& e) {
      throw Napi::Error::New(env, e.what());
    }
    if (state_->delivery.live++ == 0) state_->events.Ref(env);
    return env.Undefined();
  }

  Napi::Value Cancel(const Napi::CallbackInfo& info) {
    if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(info.Env(), "cancel(id): id must be a string");
    if (state_ && state_->loop) state_->loop->cancel(info[0].As<Napi::String>().Utf8Value());
    return info.Env().Undefined();
  }

  Napi::Value Stats(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const kiln::ServingStats s = loop(env).stats();
    Napi::Object o = Napi::Object::New(env);
    const auto num = [&](const char* k, double v) { o.Set(k, Napi::Number::New(env, v)); };
    num("running", static_cast<double>(s.running));
    num("runningPeak", static_cast<double>(s.running_peak));
    num("waiting", static_cast<double>(s.waiting));
    num("pagesUsed", static_cast<double>(s.pages_used));
    num("pagesCached", static_cast<double>(s.pages_cached));
    num("pagesTotal", static_cast<double>(s.pages_total));
    num("pagesUsedPeak", static_cast<double>(s.pages_used_peak));
    num("kvCacheBytes", static_cast<double>(s.kv_bytes));
    num("tokensPerSecond", s.tokens_per_second);
    num("prefixCacheHitRate", s.prefix_cache_hit_rate);
    num("generatedTokens", static_cast<double>(s.generated_tokens));
    num("steps", static_cast<double>(s.steps));
    num("preemptions", static_cast<double>(s.preemptions));
    o.Set("healthy", s.healthy);
    return o;
  }

  // close() -> Promise<void>: joins the loop thread on a libuv worker, then stops event delivery.
  Napi::Value Close(const Napi::CallbackInfo& info);

  kiln::GenerationRequest request_from(const Napi::Object& o) {
    Napi::Env env = o.Env();
    const auto number = [&](const Napi::Object& from, const char* field, double fallback, const char* where) {
      Napi::Value v = from.Get(field);
      if (v.IsUndefined() || v.IsNull()) return fallback;
      if (!v.IsNumber()) throw Napi::TypeError::New(env, std::string(where) + field + " must be a number");
      return v.As<Napi::Number>().DoubleValue();
    };
    const auto token_list = [&](Napi::Value v, const char* field) {
      std::vector<int32_t> out;
      if (v.IsUndefined() || v.IsNull()) return out;
      if (!v.IsArray()) throw Napi::TypeError::New(env, std::string("request.") + field + " must be an array of token ids");
      Napi::Array a = v.As<Napi::Array>();
      for (uint32_t i = 0; i < a.Length(); ++i) {
        Napi::Value t = a.Get(i);
        const double d = t.IsNumber() ? t.As<Napi::Number>().DoubleValue() : -1.5;
        if (d != static_cast<double>(static_cast<int32_t>(d))) {
          throw Napi::TypeError::New(env, std::string("request.") + field + "[" + std::to_string(i) + "] is not a token id");
        }
        out.push_back(static_cast<int32_t>(d));
      }
      return out;
    };
    kiln::GenerationRequest r;
    Napi::Value id = o.Get("id");
    if (!id.IsString()) throw Napi::TypeError::New(env, "request.id must be a string");
    r.id = id.As<Napi::String>().Utf8Value();
    r.prompt = token_list(o.Get("promptTokens"), "promptTokens");
    const double max_tokens = number(o, "maxTokens", -1, "request.");
    if (max_tokens != static_cast<double>(static_cast<int64_t>(max_tokens))) throw Napi::TypeError::New(env, "request.maxTokens must be an integer");
    r.max_tokens = static_cast<int64_t>(max_tokens);
    r.stop_token_ids = token_list(o.Get("stopTokenIds"), "stopTokenIds");
    r.sampling.logprobs = static_cast<int32_t>(number(o, "logprobs", -1, "request."));
    Napi::Value sv = o.Get("sampling");
    if (sv.IsObject()) {
      Napi::Object s = sv.As<Napi::Object>();
      kiln::SamplingParams& p = r.sampling;
      p.temperature = static_cast<float>(number(s, "temperature", 0, "sampling."));
      p.top_k = static_cast<int32_t>(number(s, "topK", 0, "sampling."));
      p.top_p = static_cast<float>(number(s, "topP", 1, "sampling."));
      p.min_p = static_cast<float>(number(s, "minP", 0, "sampling."));
      p.repetition_penalty = static_cast<float>(number(s, "repetitionPenalty", 1, "sampling."));
      p.frequency_penalty = static_cast<float>(number(s, "frequencyPenalty", 0, "sampling."));
      p.presence_penalty = static_cast<float>(number(s, "presencePenalty", 0, "sampling."));
      Napi::Value seed = s.Get("seed");
      if (!seed.IsUndefined() && !seed.IsNull()) {
        const double d = number(s, "seed", 0, "sampling.");
        if (d < 0 || d != static_cast<double>(static_cast<uint64_t>(d))) throw Napi::TypeError::New(env, "sampling.seed must be a non-negative integer");
        p.has_seed = true;
        p.seed = static_cast<uint64_t>(d);
      }
    }
    return r;
  }

  std::unique_ptr<HandleState> state_;
  friend class CloseWorker;
};

Napi::FunctionReference* ServingHandle::constructor = nullptr;

class CloseWorker : public Napi::AsyncWorker {
 public:
  CloseWorker(Napi::Env env, ServingHandle* handle, Napi::Object keep)
      : Napi::AsyncWorker(env, "kiln.close"), deferred_(Napi::Promise::Deferred::New(env)), handle_(handle), loop_(handle->state_->loop) {
    keep_ = Napi::Persistent(keep);  // the handle must outlive the close
  }
  Napi::Promise promise() const { return deferred_.Promise(); }
  void Execute() override { loop_->close(); }
  void OnOK() override {
    handle_->state_->release_events();
    keep_.Reset();
    deferred_.Resolve(Env().Undefined());
  }

 private:
  Napi::Promise::Deferred deferred_;
  ServingHandle* handle_;
  std::shared_ptr<kiln::EngineLoop> loop_;
  Napi::ObjectReference keep_;
};

Napi::Value ServingHandle::Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!state_ || !state_->loop || state_->released) {
    auto done = Napi::Promise::Deferred::New(env);
    done.Resolve(env.Undefined());
    return done.Promise();
  }
  auto* worker = new CloseWorker(env, this, info.This().As<Napi::Object>());
  worker->Queue();
  return worker->promise();
}

kiln::ServingOptions serving_options_from(const Napi::Object& o) {
  Napi::Env env = o.Env();
  const auto integer = [&](const char* field, int64_t fallback) {
    Napi::Value v = o.Get(field);
    if (v.IsUndefined() || v.IsNull()) return fallback;
    const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : -1;
    if (d < 1 || d != static_cast<double>(static_cast<int64_t>(d))) {
      throw Napi::RangeError::New(env, std::string("engine options: '") + field + "' must be a positive integer");
    }
    return static_cast<int64_t>(d);
  };
  kiln::ServingOptions s;
  s.max_batch_size = integer("maxBatchSize", 0);
  s.max_batched_tokens = integer("maxNumBatchedTokens", s.max_batched_tokens);
  s.kv_pages = integer("kvCachePages", 0);
  s.kv_cache_bytes = integer("kvCacheBytes", 0);
  Napi::Value fraction = o.Get("kvMemoryFraction");
  if (!fraction.IsUndefined() && !fraction.IsNull()) {
    const double f = fraction.IsNumber() ? fraction.As<Napi::Number>().DoubleValue() : std::nan("");
    // NaN fails both comparisons.
    if (!(f > 0.0 && f <= 1.0)) {
      throw Napi::RangeError::New(env, "engine options: 'kvMemoryFraction' must be a number in (0, 1] (got " +
                                           fraction.ToString().Utf8Value() + ")");
    }
    s.kv_memory_fraction = f;
  }
  s.page_size = integer("kvPageSize", s.page_size);
  s.max_queued = integer("maxQueuedRequests", s.max_queued);
  s.max_input_len = integer("maxInputLen", 0);
  s.threads = static_cast<int>(integer("threads", 0));
  Napi::Value dtype = o.Get("kvCacheDtype");
  if (!dtype.IsUndefined() && !dtype.IsNull()) {
    try {
      s.kv_dtype = kiln::kv_cache_dtype_from_name(dtype.ToString().Utf8Value());
    } catch (const kiln::Error& e) {
      throw Napi::RangeError::New(env, std::string("engine options: ") + e.what());
    }
  }
  return s;
}

std::string file_sha256(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw kiln::Error(path + ": cannot open to hash");
  kiln::Sha256Stream hash;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    hash.update(buf.data(), static_cast<size_t>(in.gcount()));
  }
  return hash.hex_digest();
}

class LoadWorker : public Napi::AsyncWorker {
 public:
  LoadWorker(Napi::Env env, std::string path, kiln::ServingOptions options, std::optional<std::string> verified_sha256,
             Napi::Function on_events)
      : Napi::AsyncWorker(env, "kiln.loadEngine"),
        deferred_(Napi::Promise::Deferred::New(env)),
        path_(std::move(path)),
        options_(options),
        verified_sha256_(std::move(verified_sha256)) {
    state_ = std::make_unique<HandleState>();
    state_->events = EventFn::New(env, on_events, "kiln.events", 0, 1, &state_->delivery);
    state_->events.Unref(env);
    state_->delivery.fn = state_->events;
  }
  Napi::Promise promise() const { return deferred_.Promise(); }

  void Execute() override {
    try {
      if (verified_sha256_) {
        // The caller hashed the whole file against the digest it expected a moment ago (the runtime's
        // download check): hashing its sections and the file again would read it twice more (a
        // 2.5 GB engine on 2 cores: 4.7-6.3 s of loading, 0.2 s without).
        state_->engine = kiln::Engine::load(path_, nullptr, kiln::SectionCheck::Bounds);
        state_->sha256 = *verified_sha256_;
      } else {
        kiln::ThreadPool pool(options_.threads);  // the CPUs the caller gave the engine (0: all)
        state_->engine = kiln::Engine::load(path_, &pool);
        state_->sha256 = file_sha256(path_);
      }
      EventFn events = state_->events;
      state_->loop = std::make_shared<kiln::EngineLoop>(state_->engine, options_, [events](std::vector<kiln::TokenEvent>&& batch) mutable {
        auto* data = new std::vector<kiln::TokenEvent>(std::move(batch));
        if (events.NonBlockingCall(data) != napi_ok) delete data;  // only when Node is shutting down
      });
    } catch (const std::exception& e) {
      SetError(e.what());
    }
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object handle = ServingHandle::constructor->New({});
    ServingHandle::Unwrap(handle)->adopt(std::move(state_));
    deferred_.Resolve(handle);
  }

  void OnError(const Napi::Error& error) override {
    state_->release_events();
    Napi::Error out = Napi::Error::New(Env(), "loading engine " + path_ + ": " + error.Message());
    out.Set("code", "KILN_LOAD_FAILED");
    deferred_.Reject(out.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::string path_;
  kiln::ServingOptions options_;
  std::optional<std::string> verified_sha256_;
  std::unique_ptr<HandleState> state_;
};

// options.verifiedSha256: the file's sha256 as the caller has just verified it, or none.
std::optional<std::string> verified_sha256_from(const Napi::Object& o) {
  Napi::Value v = o.Get("verifiedSha256");
  if (v.IsUndefined() || v.IsNull()) return std::nullopt;
  const std::string s = v.IsString() ? v.As<Napi::String>().Utf8Value() : "";
  const bool hex = s.size() == 64 && s.find_first_not_of("0123456789abcdef") == std::string::npos;
  if (!hex) {
    throw Napi::RangeError::New(o.Env(), "engine options: 'verifiedSha256' must be 64 lowercase hex digits (got " +
                                             v.ToString().Utf8Value() + ")");
  }
  return s;
}

}  // namespace

Napi::Value LoadEngine(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsObject() || !info[2].IsFunction()) {
    throw Napi::TypeError::New(env, "loadEngine(path, options, onEvents): a string, an object and a function");
  }
  const Napi::Object options = info[1].As<Napi::Object>();
  auto* worker = new LoadWorker(env, info[0].As<Napi::String>().Utf8Value(), serving_options_from(options),
                                verified_sha256_from(options), info[2].As<Napi::Function>());
  worker->Queue();
  return worker->promise();
}

void InitServing(Napi::Env env, Napi::Object exports) {
  ServingHandle::constructor = new Napi::FunctionReference(Napi::Persistent(ServingHandle::Define(env)));
  exports.Set("loadEngine", Napi::Function::New(env, LoadEngine, "loadEngine"));
}

}  // namespace kiln_binding
