// kiln-native: build, inspect and run Kiln engines from the command line (the parity tests and the
// builder image drive the compiler through it).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "compiler/build.h"
#include "core/error.h"
#include "core/json.h"
#include "engine/engine.h"
#include "engine/reader.h"
#include "runtime/generate.h"
#include "runtime/kv_cache.h"
#if KILN_CUDA
#include "backend/cuda/generate.h"
#include "backend/cuda/offline.h"
#endif

namespace {

using kiln::Error;
using kiln::Json;

std::atomic<bool> g_cancel{false};

constexpr const char* kUsage =
    "usage:\n"
    "  kiln-native build --model <hf_dir> --precision fp32|bf16|fp16|int8-weight|fp8 --out <engine.kiln>\n"
    "                    [--calibration <file.jsonl>] [--lm-head fp8 (with fp8)] [--max-seq-len N] [--max-batch N]\n"
    "                    [--toolchain-version V] [--no-autotune] [--threads N] [--target cpu|cuda]\n"
    "  kiln-native inspect <engine.kiln>\n"
    "  kiln-native generate --engine <engine.kiln> --tokens 1,2,3 --steps N [--logits-out <file.bin>] [--threads N]\n"
    "                       [--kv-dtype bf16|fp8 (CUDA engines)]\n"
    "  kiln-native bench --engine <engine.kiln> --prompt-len N --steps M [--threads N] [--batch B (CUDA engines)]\n"
    "                    [--kv-dtype bf16|fp8 (CUDA engines)]\n"
    "  kiln-native bench --engine <engine.kiln> --offline --requests R --prompt-len N --output-len M\n"
    "                    [--concurrency C] [--token-budget T]   (CUDA engines: offline throughput)\n"
    "  kiln-native bench --engine <engine.kiln> --suite '<json>'   (CUDA engines: several measurements, one load)\n";

// --name value options plus bare --switches; anything else is an error naming it.
class Args {
 public:
  Args(int argc, char** argv, int first, const std::vector<std::string>& switches) {
    for (int i = first; i < argc; ++i) {
      std::string a = argv[i];
      if (a.rfind("--", 0) != 0) {
        positional_.push_back(a);
        continue;
      }
      if (std::find(switches.begin(), switches.end(), a) != switches.end()) {
        values_[a] = "";
        continue;
      }
      if (i + 1 >= argc) throw Error("option " + a + " needs a value");
      values_[a] = argv[++i];
    }
  }

  bool has(const std::string& name) const { return values_.count(name) > 0; }

  std::string get(const std::string& name) const {
    const auto it = values_.find(name);
    if (it == values_.end()) throw Error("option " + name + " is required");
    return it->second;
  }

  std::string get_or(const std::string& name, const std::string& fallback) const {
    return has(name) ? get(name) : fallback;
  }

  int64_t integer(const std::string& name, int64_t fallback) const {
    if (!has(name)) return fallback;
    const std::string v = get(name);
    try {
      size_t used = 0;
      const long long parsed = std::stoll(v, &used);
      if (used != v.size()) throw std::invalid_argument(v);
      return parsed;
    } catch (const std::exception&) {
      throw Error("option " + name + " must be an integer, got \"" + v + "\"");
    }
  }

  const std::vector<std::string>& positional() const { return positional_; }

  void only(const std::vector<std::string>& allowed) const {
    for (const auto& [name, value] : values_) {
      if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) throw Error("unknown option " + name);
    }
  }

 private:
  std::map<std::string, std::string> values_;
  std::vector<std::string> positional_;
};

// Engines record the backend they were built for; Engine::load has already refused one this build
// or this machine cannot run.
bool is_cuda_engine(const kiln::Engine& engine) {
  const Json& h = engine.header();
  return h.contains("target") && h["target"].is_object() && h["target"].value("backend", "") == "cuda";
}

void print_line(const Json& j) {
  std::cout << j.dump() << std::endl;
}

int run_build(const Args& args) {
  args.only({"--model", "--precision", "--out", "--calibration", "--lm-head", "--max-seq-len", "--max-batch",
             "--toolchain-version", "--no-autotune", "--threads", "--target"});
  kiln::BuildOptions o;
  o.model_dir = args.get("--model");
  o.precision = kiln::precision_from_name(args.get("--precision"));
  o.out_path = args.get("--out");
  o.calibration_path = args.get_or("--calibration", "");
  if (args.has("--lm-head")) {
    const std::string head = args.get("--lm-head");
    if (head != "fp8") throw Error("--lm-head \"" + head + "\" is not supported (fp8; leave it out to keep the checkpoint's dtype)");
    o.fp8_lm_head = true;
  }
  o.max_seq_len = args.integer("--max-seq-len", 0);
  o.max_batch = args.integer("--max-batch", 8);
  o.toolchain_version = args.get_or("--toolchain-version", "");
  o.autotune = !args.has("--no-autotune");
  o.threads = static_cast<int>(args.integer("--threads", 0));
  o.target = args.get_or("--target", "cpu");
  const kiln::BuildResult r = kiln::build(
      o,
      [](const kiln::BuildProgress& p) {
        print_line(Json{{"phase", p.phase}, {"percent", p.percent}, {"message", p.message}});
      },
      g_cancel);
  print_line(Json{{"phase", "done"}, {"path", r.path}, {"sha256", r.sha256}, {"bytes", r.bytes}, {"seconds", r.seconds}});
  return 0;
}

int run_inspect(const Args& args) {
  args.only({});
  if (args.positional().size() != 1) throw Error("inspect takes exactly one engine path");
  std::cout << kiln::inspect(args.positional()[0]) << std::endl;
  return 0;
}

std::vector<int32_t> parse_tokens(const std::string& text) {
  std::vector<int32_t> out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = text.find(',', start);
    const std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    try {
      size_t used = 0;
      const long v = std::stol(item, &used);
      if (used != item.size() || v < 0 || v > INT32_MAX) throw std::invalid_argument(item);
      out.push_back(static_cast<int32_t>(v));
    } catch (const std::exception&) {
      throw Error("--tokens: \"" + item + "\" is not a token id");
    }
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

#if KILN_CUDA
// --kv-dtype as kvCacheDtype spells it; bf16 when not given.
kiln::DType cuda_kv_dtype(const Args& args) {
  return args.has("--kv-dtype") ? kiln::kv_cache_dtype_from_name(args.get("--kv-dtype")) : kiln::DType::BF16;
}
#endif

int run_generate(const Args& args) {
  args.only({"--engine", "--tokens", "--steps", "--logits-out", "--threads", "--kv-dtype"});
  kiln::ThreadPool pool(static_cast<int>(args.integer("--threads", 0)));
  auto engine = kiln::Engine::load(args.get("--engine"), &pool);
  const std::vector<int32_t> prompt = parse_tokens(args.get("--tokens"));
  const int64_t steps = args.integer("--steps", 32);
  std::ofstream logits_out;
  if (args.has("--logits-out")) {
    logits_out.open(args.get("--logits-out"), std::ios::binary | std::ios::trunc);
    if (!logits_out) throw Error(args.get("--logits-out") + ": cannot create");
  }
  // The file holds raw little-endian float32 rows; every supported target is little-endian.
  std::function<void(const float*, int64_t)> on_logits;
  if (logits_out.is_open()) {
    on_logits = [&](const float* logits, int64_t vocab) {
      logits_out.write(reinterpret_cast<const char*>(logits), static_cast<std::streamsize>(vocab * sizeof(float)));
    };
  }
  kiln::GreedyResult r;
  if (is_cuda_engine(*engine)) {
#if KILN_CUDA
    kiln::cuda::CudaModel model(engine);
    r = kiln::cuda::generate_greedy(model, prompt, steps, on_logits, cuda_kv_dtype(args));
#endif
  } else {
    if (args.has("--kv-dtype")) throw Error("--kv-dtype is only supported for CUDA engines");
    kiln::Model model(engine, pool);
    r = kiln::generate_greedy(model, prompt, steps, on_logits);
  }
  if (logits_out.is_open()) {
    logits_out.close();
    if (!logits_out) throw Error(args.get("--logits-out") + ": write failed");
  }
  print_line(Json{{"tokens", r.tokens}, {"prefill_ms", r.prefill_ms}, {"decode_tok_per_s", r.decode_tok_per_s}});
  return 0;
}

#if KILN_CUDA
Json offline_line(kiln::cuda::CudaModel& model, const kiln::cuda::OfflineOptions& o) {
  const auto r = kiln::cuda::offline_throughput(model, o);
  return Json{{"backend", "cuda"},
              {"mode", "offline"},
              {"requests", o.requests},
              {"prompt_len", o.prompt_len},
              {"output_len", o.output_len},
              {"concurrency", o.concurrency},
              {"token_budget", o.token_budget},
              {"steps", r.steps},
              {"output_tokens", r.output_tokens},
              {"seconds", r.seconds},
              {"output_tok_per_s", r.output_tok_per_s},
              {"total_tok_per_s", r.total_tok_per_s}};
}

int run_offline_bench(const Args& args, std::shared_ptr<const kiln::Engine> engine) {
  kiln::cuda::OfflineOptions o;
  o.requests = args.integer("--requests", o.requests);
  o.prompt_len = args.integer("--prompt-len", o.prompt_len);
  o.output_len = args.integer("--output-len", o.output_len);
  o.concurrency = args.integer("--concurrency", o.concurrency);
  o.token_budget = args.integer("--token-budget", o.token_budget);
  kiln::cuda::CudaModel model(std::move(engine));
  print_line(offline_line(model, o));
  return 0;
}

// Many measurements of one engine in one process (an 8B engine takes seconds to load): `suite` is
// {"decode": {"prompt_len", "steps", "batches": [..]}, "prefill": {"lengths": [..], "repeats"},
// "offline": [{"requests", "prompt_len", "output_len", "concurrency", "token_budget"}, ..]}, every
// part optional; prints one JSON line per measurement.
int run_bench_suite(const std::string& text, std::shared_ptr<const kiln::Engine> engine) {
  Json suite;
  try {
    suite = Json::parse(text);
  } catch (const Json::exception& e) {
    throw Error(std::string("--suite is not JSON: ") + e.what());
  }
  kiln::cuda::CudaModel model(std::move(engine));
  try {
    if (suite.contains("decode")) {
      const Json& d = suite["decode"];
      const int64_t prompt_len = d.value("prompt_len", int64_t{128});
      const int64_t steps = d.value("steps", int64_t{64});
      const std::vector<int64_t> cost_batches = d.value("kernel_costs", std::vector<int64_t>{});
      for (const auto& b : d.at("batches")) {
        const int64_t batch = b.get<int64_t>();
        const bool costs = std::find(cost_batches.begin(), cost_batches.end(), batch) != cost_batches.end();
        const auto r = kiln::cuda::bench(model, prompt_len, steps, batch, kiln::DType::BF16, costs);
        Json line{{"mode", "decode"}, {"batch", b}, {"prompt_len", prompt_len}, {"steps", steps},
                  {"decode_step_ms", r.decode_step_ms}, {"decode_tok_per_s", r.decode_tok_per_s},
                  {"decode_replay_ms", r.decode_replay_ms}};
        if (costs) {
          Json families = Json::array();
          const auto maybe = [](const std::optional<double>& v) { return v ? Json(*v) : Json(); };
          for (const auto& c : r.kernel_costs) {
            Json family{{"kernel", c.kernel}, {"blocks", c.blocks}, {"launches", c.launches},
                        {"step_ms_without", maybe(c.step_ms_without)}};
            if (!r.timeline_note.empty()) {
              family["critical_us"] = maybe(c.critical_us);
              family["waited_us"] = maybe(c.waited_us);
              family["release_spread_us"] = maybe(c.release_spread_us);
            }
            families.push_back(std::move(family));
          }
          line["kernel_costs_step_ms"] = r.kernel_costs_step_ms;
          if (!r.timeline_note.empty()) line["timeline"] = r.timeline_note;
          line["kernel_costs"] = std::move(families);
        }
        print_line(line);
      }
    }
    if (suite.contains("prefill")) {
      const Json& p = suite["prefill"];
      const int64_t repeats = p.value("repeats", int64_t{5});
      for (const auto& len : p.at("lengths")) {
        const double ms = kiln::cuda::bench_prefill(model, len.get<int64_t>(), repeats);
        print_line(Json{{"mode", "prefill"}, {"prompt_len", len}, {"repeats", repeats}, {"prefill_ms", ms}});
      }
    }
    for (const auto& c : suite.value("offline", Json::array())) {
      kiln::cuda::OfflineOptions o;
      o.requests = c.value("requests", o.requests);
      o.prompt_len = c.value("prompt_len", o.prompt_len);
      o.output_len = c.value("output_len", o.output_len);
      o.concurrency = c.value("concurrency", o.concurrency);
      o.token_budget = c.value("token_budget", o.token_budget);
      print_line(offline_line(model, o));
    }
  } catch (const Json::exception& e) {
    throw Error(std::string("--suite: ") + e.what());
  }
  return 0;
}
#endif

int run_bench(const Args& args) {
  args.only({"--engine", "--prompt-len", "--steps", "--threads", "--batch", "--offline", "--requests", "--output-len",
             "--concurrency", "--token-budget", "--suite", "--kv-dtype"});
  kiln::ThreadPool pool(static_cast<int>(args.integer("--threads", 0)));
  auto engine = kiln::Engine::load(args.get("--engine"), &pool);
  const int64_t prompt_len = args.integer("--prompt-len", 128);
  const int64_t steps = args.integer("--steps", 64);
  const int64_t batch = args.integer("--batch", 1);
  if (prompt_len < 1) throw Error("--prompt-len must be at least 1");
  if ((args.has("--offline") || args.has("--suite")) && !is_cuda_engine(*engine)) {
    throw Error("--offline and --suite are only supported for CUDA engines");
  }
  if (args.has("--kv-dtype") && (args.has("--offline") || args.has("--suite") || !is_cuda_engine(*engine))) {
    throw Error("--kv-dtype is only supported for single CUDA benchmarks (not --offline or --suite)");
  }
  if (is_cuda_engine(*engine)) {
#if KILN_CUDA
    if (args.has("--offline")) return run_offline_bench(args, engine);
    if (args.has("--suite")) return run_bench_suite(args.get("--suite"), engine);
    kiln::cuda::CudaModel model(engine);
    const auto r = kiln::cuda::bench(model, prompt_len, steps, batch, cuda_kv_dtype(args));
    print_line(Json{{"backend", "cuda"},
                    {"prompt_len", prompt_len},
                    {"steps", steps},
                    {"batch", batch},
                    {"prefill_ms", r.prefill_ms},
                    {"prefill_tok_per_s", r.prefill_ms > 0 ? 1000.0 * static_cast<double>(prompt_len) / r.prefill_ms : 0.0},
                    {"decode_step_ms", r.decode_step_ms},
                    {"decode_tok_per_s", r.decode_tok_per_s},
                    {"decode_replay_ms", r.decode_replay_ms}});
#endif
    return 0;
  }
  if (batch != 1) throw Error("--batch is only supported for CUDA engines");
  kiln::Model model(engine, pool);
  std::vector<int32_t> prompt(static_cast<size_t>(prompt_len));
  for (int64_t i = 0; i < prompt_len; ++i) {
    prompt[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7919 + 13) % model.config().vocab_size);
  }
  const auto r = kiln::generate_greedy(model, prompt, steps);
  print_line(Json{{"prompt_len", prompt_len},
                  {"steps", steps},
                  {"threads", pool.size()},
                  {"prefill_ms", r.prefill_ms},
                  {"prefill_tok_per_s", r.prefill_ms > 0 ? 1000.0 * static_cast<double>(prompt_len) / r.prefill_ms : 0.0},
                  {"decode_tok_per_s", r.decode_tok_per_s}});
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGINT, [](int) { g_cancel.store(true); });
  std::signal(SIGTERM, [](int) { g_cancel.store(true); });
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::cerr << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  try {
    if (command == "build") return run_build(Args(argc, argv, 2, {"--no-autotune"}));
    if (command == "inspect") return run_inspect(Args(argc, argv, 2, {}));
    if (command == "generate") return run_generate(Args(argc, argv, 2, {}));
    if (command == "bench") return run_bench(Args(argc, argv, 2, {"--offline"}));
    std::cerr << "kiln-native: unknown command \"" << command << "\"\n" << kUsage;
    return 2;
  } catch (const kiln::Cancelled& e) {
    std::cerr << "kiln-native: " << e.what() << "\n";
    return 130;
  } catch (const std::exception& e) {
    std::cerr << "kiln-native: " << e.what() << "\n";
    return 1;
  }
}
