// The serving loop's backend seam on the CPU: a backend with its own argmax (as the GPU's) gets no
// logits request for a step of plain greedy rows, and one that also draws (as the GPU's) gets the
// sampled rows as draws, logits only for rows with penalties; every request's tokens are those of
// the CPU backend; the cache sizes reach the limits; the backend follows the engine's target.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>

#include "build_helpers.h"
#include "core/error.h"
#include "engine/engine.h"
#include "runtime/cpu_step_model.h"
#include "runtime/engine_loop.h"
#include "runtime/kv_cache.h"
#include "sampler_reference.h"

namespace kiln::test {
namespace {

// Finished token streams by request id, filled from the loop thread.
class Streams {
 public:
  EventSink sink() {
    return [this](std::vector<TokenEvent>&& events) {
      std::lock_guard<std::mutex> lock(mutex_);
      for (TokenEvent& e : events) {
        for (const TokenChoice& c : e.tokens) tokens_[e.id].push_back(c.token);
        if (e.finished) ++finished_;
      }
      changed_.notify_all();
    };
  }
  std::map<std::string, std::vector<int32_t>> wait(size_t count) {
    std::unique_lock<std::mutex> lock(mutex_);
    EXPECT_TRUE(changed_.wait_for(lock, std::chrono::seconds(120), [&] { return finished_ >= count; }));
    return tokens_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::map<std::string, std::vector<int32_t>> tokens_;
  size_t finished_ = 0;
};

// The CPU backend dressed as one with a device argmax, and with `samples` a device draw too (the
// reference sampler's draw for the uniform number the loop hands over); it records which steps
// asked for logits and how many rows it drew.
class ArgmaxBackend : public StepModel {
 public:
  ArgmaxBackend(std::shared_ptr<const Engine> engine, const StepModelOptions& o, bool samples = false)
      : cpu_(std::move(engine), o), samples_(samples) {}

  const ModelConfig& config() const override { return cpu_.config(); }
  const char* backend() const override { return "argmax-test"; }
  const KvCacheSize& kv_size() const override { return cpu_.kv_size(); }
  DType kv_dtype() const override { return cpu_.kv_dtype(); }
  bool greedy_without_logits() const override { return true; }
  bool samples_without_logits() const override { return samples_; }

  void forward(const ForwardBatch& batch, const RowRequest* rows, int32_t* tokens, float* logits) override {
    const int64_t vocab = config().vocab_size;
    const int64_t n = batch.logit_rows();
    std::vector<float> own(static_cast<size_t>(n * vocab));
    std::vector<RowRequest> all_logits(static_cast<size_t>(n));
    cpu_.forward(batch, all_logits.data(), nullptr, own.data());
    bool wants_logits = false;
    int drawn = 0;
    for (int64_t r = 0; r < n; ++r) {
      const float* row = own.data() + r * vocab;
      switch (rows[r].want) {
        case RowWant::Greedy:
          tokens[r] = static_cast<int32_t>(std::max_element(row, row + vocab) - row);
          break;
        case RowWant::Sample: {
          EXPECT_TRUE(samples_);
          const SampleDraw& d = rows[r].draw;
          SamplingParams p;
          p.temperature = d.temperature;
          p.top_k = d.top_k;
          p.top_p = d.top_p;
          p.min_p = d.min_p;
          tokens[r] = reference::sample_sorted(std::vector<float>(row, row + vocab), p, d.u);
          ++drawn;
          break;
        }
        case RowWant::Logits:
          wants_logits = true;
          std::copy(row, row + vocab, logits + r * vocab);
          break;
      }
    }
    std::lock_guard<std::mutex> lock(mutex);
    (wants_logits ? steps_with_logits : steps_without_logits) += 1;
    rows_drawn += drawn;
  }

  std::mutex mutex;
  int steps_with_logits = 0;
  int steps_without_logits = 0;
  int rows_drawn = 0;

 private:
  CpuStepModel cpu_;
  bool samples_;
};

std::shared_ptr<const Engine> tiny_engine(const std::string& name) {
  return Engine::load(build_engine(write_tiny_checkpoint(name, TinySpec{}), Precision::FP32));
}

GenerationRequest request(const std::string& id, int i, int64_t length, int64_t max_tokens) {
  GenerationRequest r;
  r.id = id;
  for (int64_t k = 0; k < length; ++k) r.prompt.push_back(static_cast<int32_t>((i * 17 + k * 7 + 5) % 96));
  r.max_tokens = max_tokens;
  return r;
}

std::vector<GenerationRequest> mixed_requests(bool with_sampled) {
  std::vector<GenerationRequest> out;
  for (int i = 0; i < 6; ++i) out.push_back(request("g" + std::to_string(i), i, 3 + i * 9, 10 + i));
  if (with_sampled) {
    GenerationRequest s = request("sampled", 40, 12, 16);
    s.sampling.temperature = 0.8f;
    s.sampling.top_p = 0.9f;
    s.sampling.has_seed = true;
    s.sampling.seed = 1234;
    out.push_back(s);
    GenerationRequest penalized = request("penalized", 41, 5, 12);
    penalized.sampling.repetition_penalty = 1.3f;
    out.push_back(penalized);
  }
  return out;
}

std::map<std::string, std::vector<int32_t>> serve(EngineLoop& loop, Streams& streams, std::vector<GenerationRequest> rs) {
  const size_t n = rs.size();
  for (GenerationRequest& r : rs) loop.submit(std::move(r));
  return streams.wait(n);
}

ServingOptions options() {
  ServingOptions o;
  o.max_batch_size = 8;
  o.max_batched_tokens = 32;  // prompts are chunked and interleaved with decode
  o.threads = 2;
  return o;
}

TEST(StepModelSeam, GreedyStepsOnADeviceArgmaxBackendAskForNoLogitsAndGiveTheCpuTokens) {
  auto engine = tiny_engine("seam_greedy");
  Streams cpu_streams;
  EngineLoop cpu(engine, options(), cpu_streams.sink());
  const auto want = serve(cpu, cpu_streams, mixed_requests(false));

  auto backend = std::make_unique<ArgmaxBackend>(engine, step_model_options(*engine, options()));
  ArgmaxBackend* seen = backend.get();
  Streams streams;
  EngineLoop loop(engine, options(), std::move(backend), streams.sink());
  EXPECT_EQ(serve(loop, streams, mixed_requests(false)), want);
  EXPECT_EQ(loop.stats().pages_used, 0);
  std::lock_guard<std::mutex> lock(seen->mutex);
  EXPECT_EQ(seen->steps_with_logits, 0);
  EXPECT_GT(seen->steps_without_logits, 10);
}

TEST(StepModelSeam, SampledAndPenalizedRowsGetLogitsOnTheHostBesideDeviceGreedyRows) {
  auto engine = tiny_engine("seam_mixed");
  Streams cpu_streams;
  EngineLoop cpu(engine, options(), cpu_streams.sink());
  const auto want = serve(cpu, cpu_streams, mixed_requests(true));

  auto backend = std::make_unique<ArgmaxBackend>(engine, step_model_options(*engine, options()));
  ArgmaxBackend* seen = backend.get();
  Streams streams;
  EngineLoop loop(engine, options(), std::move(backend), streams.sink());
  const auto got = serve(loop, streams, mixed_requests(true));
  // The seeded sampler draws from the same logits, so even the sampled stream is the CPU's.
  EXPECT_EQ(got, want);
  EXPECT_EQ(got.at("sampled").size(), 16u);
  EXPECT_EQ(loop.stats().pages_used, 0);
  std::lock_guard<std::mutex> lock(seen->mutex);
  EXPECT_GT(seen->steps_with_logits, 0);
}

TEST(StepModelSeam, ABackendThatDrawsOnItsDeviceGetsTheSamplersNextUniformAndGivesTheCpuTokens) {
  auto engine = tiny_engine("seam_draws");
  Streams cpu_streams;
  EngineLoop cpu(engine, options(), cpu_streams.sink());
  const auto want = serve(cpu, cpu_streams, mixed_requests(true));

  auto backend = std::make_unique<ArgmaxBackend>(engine, step_model_options(*engine, options()), true);
  ArgmaxBackend* seen = backend.get();
  Streams streams;
  EngineLoop loop(engine, options(), std::move(backend), streams.sink());
  const auto got = serve(loop, streams, mixed_requests(true));
  // Every token of the seeded request was drawn by the backend, with the uniform numbers the host
  // Sampler would have drawn in turn: the stream is the CPU's. The penalized row still needs logits.
  EXPECT_EQ(got, want);
  std::lock_guard<std::mutex> lock(seen->mutex);
  EXPECT_EQ(seen->rows_drawn, 16);
  EXPECT_GT(seen->steps_with_logits, 0);
}

TEST(StepModelSeam, PrefillChunksThatWantNoLogitsRunOnEitherBackend) {
  auto engine = tiny_engine("seam_chunks");
  ServingOptions o = options();
  o.max_batched_tokens = 8;  // a lone 60-token prompt: seven steps without a logits row first
  GenerationRequest r = request("long", 3, 60, 5);
  Streams cpu_streams;
  EngineLoop cpu(engine, o, cpu_streams.sink());
  const auto want = serve(cpu, cpu_streams, {r});
  EXPECT_EQ(want.at("long").size(), 5u);
  EXPECT_TRUE(cpu.stats().healthy);

  Streams streams;
  EngineLoop loop(engine, o, std::make_unique<ArgmaxBackend>(engine, step_model_options(*engine, o)), streams.sink());
  EXPECT_EQ(serve(loop, streams, {r}), want);
  EXPECT_TRUE(loop.stats().healthy);
}

TEST(StepModelSeam, TheLimitsReportTheBackendAndTheCacheItSized) {
  auto engine = tiny_engine("seam_limits");
  Streams streams;
  ServingOptions o = options();
  const int64_t page_bytes = kv_page_bytes(engine->config().num_layers, 16, engine->config().kv_dim(), DType::F32);
  {
    EngineLoop loop(engine, o, streams.sink());
    EXPECT_EQ(loop.limits().backend, "cpu");
    EXPECT_EQ(loop.limits().kv_pages, 8 * (128 / 16));  // room for maxBatchSize sequences of maxSeqLen
    EXPECT_EQ(loop.limits().kv_bytes, loop.limits().kv_pages * page_bytes);
    EXPECT_EQ(loop.stats().kv_bytes, loop.limits().kv_bytes);
  }
  o.kv_cache_bytes = 20 * page_bytes + 1;
  {
    EngineLoop loop(engine, o, streams.sink());
    EXPECT_EQ(loop.limits().kv_pages, 20);
    EXPECT_EQ(loop.stats().pages_total, 20);
  }
  o.kv_pages = 9;  // wins over the byte budget
  {
    EngineLoop loop(engine, o, streams.sink());
    EXPECT_EQ(loop.limits().kv_pages, 9);
    EXPECT_EQ(loop.limits().kv_basis, "kvCachePages");
  }
  o = options();
  o.kv_memory_fraction = 0.9;  // a fraction of host memory: capped at room for the batch
  {
    EngineLoop loop(engine, o, streams.sink());
    EXPECT_EQ(loop.limits().kv_pages, 64);
  }
  o.kv_memory_fraction = 1.5;
  EXPECT_THROW(EngineLoop(engine, o, streams.sink()), Error);
}

// info() reports the cache type in the spelling kvCacheDtype takes, so a reported type can be passed back.
TEST(StepModelSeam, KvCacheDtypeNamesRoundTrip) {
  for (const char* name : {"fp32", "bf16", "fp8"}) EXPECT_STREQ(kv_cache_dtype_name(kv_cache_dtype_from_name(name)), name);
}

// kvCacheDtype "fp8" parses (the CUDA backend keeps an E4M3 cache, one byte per element) but the CPU
// backend refuses it, naming the option and itself.
TEST(StepModelSeam, AnFp8KvCacheIsRefusedOnTheCpuNamingTheOptionAndTheBackend) {
  EXPECT_EQ(kv_cache_dtype_from_name("fp8"), DType::F8E4M3);
  EXPECT_EQ(2 * kv_page_bytes(4, 16, 64, DType::F8E4M3), kv_page_bytes(4, 16, 64, DType::BF16));
  auto engine = tiny_engine("seam_fp8_kv");
  ServingOptions o = options();
  o.kv_dtype = DType::F8E4M3;
  try {
    make_step_model(engine, step_model_options(*engine, o));
    ADD_FAILURE() << "an fp8 KV cache was accepted on the CPU";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("kvCacheDtype"), std::string::npos) << m;
    EXPECT_NE(m.find("CPU backend"), std::string::npos) << m;
  }
}

// The runtimes size their buffers by the header's limits, which they read through Engine::limit: a
// value from 1 to 2^22 is taken, anything else refused naming the engine's field.
TEST(StepModelSeam, EngineLimitsAreReadOrRefusedNamingTheField) {
  auto engine = tiny_engine("seam_limits");
  EXPECT_EQ(engine->limit("max_seq_len"), engine->header()["limits"]["max_seq_len"].get<int64_t>());
  EXPECT_EQ(engine->limit("max_batch"), engine->header()["limits"]["max_batch"].get<int64_t>());
  Json largest = engine->header();
  largest["limits"]["max_batch"] = int64_t{1} << 22;
  EXPECT_EQ(Engine::from_tensors(largest, {})->limit("max_batch"), int64_t{1} << 22);
  const auto refused = [&](const char* field, const Json& value) {
    Json header = engine->header();
    if (value.is_null()) header["limits"].erase(field);
    else header["limits"][field] = value;
    auto bad = Engine::from_tensors(header, {});
    try {
      bad->limit(field);
      ADD_FAILURE() << field << " = " << value.dump() << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("limits.") + field), std::string::npos) << e.what();
    }
  };
  refused("max_batch", 0);
  refused("max_batch", "8");
  refused("max_seq_len", Json());
  refused("max_seq_len", int64_t{1} << 23);
}

#if !KILN_CUDA
TEST(StepModelSeam, ACudaEngineInABuildWithoutCudaIsRefusedNamingTheTarget) {
  auto cpu_engine = tiny_engine("seam_target");
  Json header = cpu_engine->header();
  header["target"] = Json{{"backend", "cuda"}, {"fingerprint", "cuda:sm_90a:NVIDIA H200"}};
  auto engine = Engine::from_tensors(header, {});
  EXPECT_EQ(engine_backend(*engine), "cuda");
  EXPECT_EQ(engine_backend(*cpu_engine), "cpu");
  try {
    make_step_model(engine, step_model_options(*engine, options()));
    ADD_FAILURE() << "a CUDA engine was accepted";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("CUDA target \"cuda:sm_90a:NVIDIA H200\""), std::string::npos) << m;
    EXPECT_NE(m.find("KILN_CUDA=ON"), std::string::npos) << m;
  }
}
#endif

}  // namespace
}  // namespace kiln::test
