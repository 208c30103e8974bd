#include "runtime/cpu_step_model.h"

#include <filesystem>

#include "core/error.h"

namespace kiln {

namespace {

int64_t pages_per_sequence(const StepModelOptions& o) { return (o.max_seq_len + o.page_size - 1) / o.page_size; }

KvCacheSize size_for(const Engine& engine, const StepModelOptions& o) {
  const DType dtype = o.kv_dtype.value_or(DType::F32);
  if (dtype != DType::F32 && dtype != DType::BF16) {
    throw Error(std::string("serving options: kvCacheDtype ") + dtype_name(dtype) +
                " is not available on the CPU backend, whose KV cache is fp32 or bf16 (fp8 needs the CUDA backend)");
  }
  const ModelConfig& c = engine.config();
  return size_kv_cache(o.kv, cpu_kv_budget(engine, o), kv_page_bytes(c.num_layers, o.page_size, c.kv_dim(), dtype),
                       pages_per_sequence(o));
}

}  // namespace

KvMemoryBudget cpu_kv_budget(const Engine& engine, const StepModelOptions& o) {
  KvMemoryBudget b;
  std::error_code ec;
  const auto file_bytes = std::filesystem::file_size(engine.source(), ec);
  const int64_t weights = ec ? 0 : static_cast<int64_t>(file_bytes);
  b.available_bytes = std::max<int64_t>(host_memory_bytes() - weights, 0);
  b.available_what = "host memory less the engine file";
  b.default_pages = o.max_batch_size * pages_per_sequence(o);
  b.default_what = "room for maxBatchSize (" + std::to_string(o.max_batch_size) + ") sequences of maxSeqLen";
  b.fraction_cap_pages = b.default_pages;
  return b;
}

CpuStepModel::CpuStepModel(std::shared_ptr<const Engine> engine, const StepModelOptions& o)
    : pool_(o.threads),
      model_(engine, pool_),
      size_(size_for(*engine, o)),
      cache_(engine->config().num_layers, size_.pages, o.page_size, engine->config().kv_dim(), o.kv_dtype.value_or(DType::F32)) {}

void CpuStepModel::forward(const ForwardBatch& batch, const RowRequest* rows, int32_t* /*tokens*/, float* logits) {
  const int64_t n = batch.logit_rows();
  for (int64_t r = 0; r < n; ++r) {
    if (rows[r].want != RowWant::Logits) {
      throw Error("CPU step: every token comes from the host sampler; ask for logits");
    }
  }
  if (!logits && n > 0) throw Error("CPU step: the batch wants logits and none were given room");
  model_.forward(batch, cache_, logits);
}

}  // namespace kiln
