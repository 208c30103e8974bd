#include "compiler/build.h"

#include <algorithm>
#include <chrono>
#include <filesystem>

#include "backend/cpu/target.h"
#include "compiler/autotune.h"
#include "compiler/calibrate.h"
#include "compiler/passes/layout.h"
#include "compiler/passes/passes.h"
#include "core/error.h"
#include "core/mapped_file.h"
#include "engine/engine.h"
#include "engine/format.h"
#include "engine/writer.h"
#include "model/architecture.h"
#if KILN_CUDA
#include "backend/cuda/autotune.h"
#include "backend/cuda/device.h"
#endif

#ifndef KILN_VERSION
#define KILN_VERSION "0.0.0"
#endif

namespace kiln {

namespace fs = std::filesystem;

const char* library_version() { return KILN_VERSION; }

namespace {

// Phases share the percent range in proportion to their usual cost.
struct PhaseRange {
  const char* phase;
  int begin;
  int end;
};
constexpr PhaseRange kLoad{"load", 0, 20};
constexpr PhaseRange kPasses{"passes", 20, 30};
constexpr PhaseRange kCalibrate{"calibrate", 30, 45};
constexpr PhaseRange kQuantize{"quantize", 45, 55};
constexpr PhaseRange kAutotune{"autotune", 55, 90};
constexpr PhaseRange kWrite{"write", 90, 100};

class Reporter {
 public:
  Reporter(const ProgressFn& fn, const std::atomic<bool>& cancel) : fn_(fn), cancel_(cancel) {}

  void check_cancel() const {
    if (cancel_.load()) throw Cancelled();
  }

  void say(const PhaseRange& p, double fraction, const std::string& message) {
    check_cancel();
    if (!fn_) return;
    const int percent = p.begin + static_cast<int>(std::clamp(fraction, 0.0, 1.0) * (p.end - p.begin));
    fn_(BuildProgress{p.phase, percent, message});
  }

  // A callback for long loops: cancellable at every step, reporting about every 5% of the phase.
  std::function<void(size_t, size_t)> steps(const PhaseRange& p, const std::string& what) {
    return [this, &p, what, last = -1](size_t done, size_t total) mutable {
      check_cancel();
      const int tick = total ? static_cast<int>(20 * done / total) : 20;
      if (tick == last) return;
      last = tick;
      say(p, total ? static_cast<double>(done) / static_cast<double>(total) : 1.0,
          what + " " + std::to_string(done) + "/" + std::to_string(total));
    };
  }

 private:
  const ProgressFn& fn_;
  const std::atomic<bool>& cancel_;
};

Json read_json_file(const fs::path& path) {
  try {
    return Json::parse(read_text_file(path.string()));
  } catch (const Json::exception& e) {
    throw Error(path.string() + ": invalid JSON: " + e.what());
  }
}

// tokenizer_config.json may carry the template as a string or as a list of named templates; newer
// checkpoints put it in chat_template.jinja.
Json chat_template_of(const fs::path& dir) {
  if (fs::exists(dir / "chat_template.jinja")) return read_text_file((dir / "chat_template.jinja").string());
  if (fs::exists(dir / "tokenizer_config.json")) {
    const Json tc = read_json_file(dir / "tokenizer_config.json");
    if (tc.contains("chat_template")) return tc["chat_template"];
  }
  return nullptr;
}

Json special_tokens_of(const Json& hf_config, const fs::path& dir) {
  Json out = Json::object();
  for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id"}) {
    if (hf_config.contains(key)) out[key] = hf_config[key];
  }
  if (fs::exists(dir / "generation_config.json")) {
    const Json gen = read_json_file(dir / "generation_config.json");
    for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id"}) {
      if (gen.contains(key)) out[key] = gen[key];
    }
  }
  return out;
}

std::vector<int64_t> batch_buckets(int64_t max_batch) {
  std::vector<int64_t> b{1, 8, 64};
  if (max_batch > 64) b.push_back(max_batch);
  return b;
}

Json target_info(bool cuda_target) {
#if KILN_CUDA
  if (cuda_target) return cuda::target_info();
#endif
  (void)cuda_target;
  return cpu_target_info();
}

Json passes_json(const std::vector<PassReport>& reports) {
  Json out = Json::array();
  for (const auto& r : reports) out.push_back(Json{{"name", r.name}, {"applied", r.applied}, {"detail", r.detail}});
  return out;
}

}  // namespace

BuildResult build(const BuildOptions& o, const ProgressFn& progress, const std::atomic<bool>& cancel) {
  const auto started = std::chrono::steady_clock::now();
  Reporter report(progress, cancel);
  if (o.model_dir.empty()) throw Error("build: --model is required");
  if (o.out_path.empty()) throw Error("build: --out is required");
  if (o.precision == Precision::FP8 && o.calibration_path.empty()) {
    throw Error("build: fp8 needs --calibration <file.jsonl> (one JSON array of token ids per line) to choose "
                "activation scales");
  }
  if (o.fp8_lm_head && o.precision != Precision::FP8) {
    throw Error(std::string("build: --lm-head fp8 needs --precision fp8 (the lm_head's input scale comes from fp8 "
                            "calibration), not ") + precision_name(o.precision));
  }
  if (o.max_batch < 1) throw Error("build: --max-batch must be at least 1");
  const bool cuda_target = o.target == "cuda";
  if (!cuda_target && o.target != "cpu") throw Error("build: --target \"" + o.target + "\" is not supported (cpu, cuda)");
#if !KILN_CUDA
  if (cuda_target) throw Error("build: --target cuda needs a build of kiln with the CUDA backend (-DKILN_CUDA=ON)");
#endif
  if (cuda_target && o.precision != Precision::BF16 && o.precision != Precision::FP8) {
    throw Error(std::string("build: the CUDA target runs bf16 and fp8 engines, not ") + precision_name(o.precision));
  }
  const fs::path dir(o.model_dir);
  ThreadPool pool(o.threads);

  // load
  report.say(kLoad, 0, "reading " + (dir / "config.json").string());
  const Json hf_config = read_json_file(dir / "config.json");
  const ModelConfig config = parse_hf_config(hf_config, (dir / "config.json").string());
  const int64_t max_seq_len = o.max_seq_len > 0 ? o.max_seq_len : std::min<int64_t>(config.max_position_embeddings, 4096);
  // cuBLASLt's E4M3 GEMMs need 16-byte aligned dimensions, which the decoder's always have.
  if (o.fp8_lm_head && cuda_target && config.vocab_size % 16 != 0) {
    throw Error("build: --lm-head fp8 on the CUDA target needs a vocabulary that is a multiple of 16 (E4M3 GEMM "
                "alignment); this checkpoint has " + std::to_string(config.vocab_size) + ": leave --lm-head out");
  }
  // The checkpoint's mapping ends with the load: its pages would otherwise count against the build's
  // memory next to the fp32 graph decoded from them.
  Graph graph = load_graph(config, Checkpoint::open(o.model_dir), report.steps(kLoad, "loaded tensor"), &pool);
  report.say(kLoad, 1, config.hf_architecture + ": " + std::to_string(config.num_layers) + " layers, hidden " +
                           std::to_string(config.hidden_size) + ", " + std::to_string(graph.weights.size()) + " tensors");

  // passes
  std::vector<PassReport> reports;
  reports.push_back(drop_unused(graph));
  reports.push_back(fuse_qkv(graph));
  reports.push_back(fuse_gate_up(graph));
  reports.push_back(fold_rmsnorm_gamma(graph, quantizes_activations(o.precision)));
  for (size_t i = 0; i < reports.size(); ++i) {
    report.say(kPasses, static_cast<double>(i + 1) / static_cast<double>(reports.size() + 1),
               reports[i].name + ": " + reports[i].detail);
  }

  Json header{{"format", "kiln-engine"},
              {"format_version", kEngineFormatVersion},
              {"toolchain_version", o.toolchain_version.empty() ? std::string("kiln-native ") + KILN_VERSION : o.toolchain_version},
              {"target", target_info(cuda_target)},
              {"model", model_config_to_json(config)},
              {"precision", precision_name(o.precision)},
              {"limits", Json{{"max_seq_len", max_seq_len}, {"max_batch", o.max_batch}}},
              {"special_tokens", special_tokens_of(hf_config, dir)},
              {"hf_config", hf_config}};

  // calibrate
  std::map<std::string, float> input_amax;
  Json calibration = nullptr;
  if (o.precision == Precision::FP8) {
    const auto sequences = read_calibration_sequences(o.calibration_path, config.vocab_size, max_seq_len);
    report.say(kCalibrate, 0, "running the fp32 model over " + std::to_string(sequences.size()) + " sequences");
    // The fp32 reference runs on the graph's own weights, in place: they are the bytes an fp32
    // quantize would copy (4 more bytes a parameter at the build's peak).
    Json ref_header = header;
    ref_header["quantization"] = quantization_header(Precision::FP32, graph.config);
    std::vector<TensorView> weights;
    for (const auto& [name, w] : graph.weights) {
      weights.push_back(TensorView{name, DType::F32, w.shape, WeightLayout::Row,
                                   reinterpret_cast<const uint8_t*>(w.data.data()), w.data.size() * sizeof(float)});
    }
    auto engine = Engine::borrowing(ref_header, weights);
    input_amax = calibrate_input_amax(engine, sequences, pool, report.steps(kCalibrate, "calibration sequence"));
    size_t tokens = 0;
    for (const auto& s : sequences) tokens += s.size();
    calibration = Json{{"file", fs::path(o.calibration_path).filename().string()},
                       {"sequences", sequences.size()},
                       {"tokens", tokens},
                       {"statistic", "amax of each GEMM input and of each layer's cached keys and values over all calibration tokens"}};
  } else if (!o.calibration_path.empty()) {
    report.say(kCalibrate, 1, std::string("calibration not needed for ") + precision_name(o.precision) + ", skipped");
  }

  // quantize
  report.say(kQuantize, 0, std::string("applying ") + precision_name(o.precision));
  QuantizedModel q = quantize_releasing(graph, o.precision, input_amax, report.steps(kQuantize, "quantized tensor"), &pool,
                                        o.fp8_lm_head);

  // autotune
  std::vector<std::string> gemm_weights = q.gemm_weights;
  std::set<std::string> row_only;
  // The logits GEMM's weight: an fp8 lm_head is always lm_head.weight (a tied one is copied).
  const std::string head = o.fp8_lm_head ? "lm_head.weight" : graph.find_node("lm_head")->weights[0];
  gemm_weights.push_back(head);
  if (head == "embed.weight") row_only.insert("embed.weight");
  AutotuneResult tuned;
  if (cuda_target) {
#if KILN_CUDA
    const std::vector<int64_t> buckets = cuda::gemm_buckets(o.max_batch, max_seq_len);
    if (o.autotune) {
      tuned = cuda::autotune_gemms(q.tensors, gemm_weights, head, buckets, o.max_batch,
                                   report.steps(kAutotune, "tuned GEMM shape/bucket"));
    } else {
      tuned.table = Json{{"enabled", false}, {"backend", "cuda"}, {"buckets", buckets}, {"entries", Json::array()}};
    }
#endif
  } else {
    const std::vector<int64_t> buckets = batch_buckets(o.max_batch);
    tuned = o.autotune ? autotune_gemms(q.tensors, gemm_weights, row_only, buckets, pool,
                                        report.steps(kAutotune, "timed tactic"))
                       : untuned_gemms(buckets);
  }
  reports.push_back(apply_weight_layouts(q.tensors, tuned.layouts));
  report.say(kAutotune, 1, reports.back().name + ": " + reports.back().detail);

  header["passes"] = passes_json(reports);
  header["quantization"] = q.quantization;
  header["calibration"] = calibration;
  header["autotune"] = tuned.table;
  header["chat_template"] = chat_template_of(dir);
  header["tokenizer"] = nullptr;
  if (fs::exists(dir / "tokenizer.json")) {
    const std::string text = read_text_file((dir / "tokenizer.json").string());
    q.tensors.push_back(TensorBlob{"tokenizer.json", DType::U8, {static_cast<int64_t>(text.size())}, WeightLayout::Row,
                                   std::vector<uint8_t>(text.begin(), text.end())});
    header["tokenizer"] = Json{{"section", "tokenizer.json"}, {"bytes", text.size()}};
  }

  // write
  report.say(kWrite, 0, "writing " + o.out_path);
  const WrittenEngine written = write_engine(o.out_path, std::move(header), q.tensors, report.steps(kWrite, "section"), &pool);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return BuildResult{o.out_path, written.sha256, written.bytes, seconds};
}

}  // namespace kiln
