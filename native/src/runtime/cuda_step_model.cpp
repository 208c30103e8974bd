// Compiled into every build; empty unless the CUDA backend is (KILN_CUDA).
#include "runtime/cuda_step_model.h"

#if KILN_CUDA

#include <algorithm>

#include "backend/cuda/check.h"
#include "core/error.h"

namespace kiln {

namespace {

constexpr double kDefaultGpuFraction = 0.9;

// bf16 unless kvCacheDtype says fp8 (E4M3: one byte per element, so twice the pages of bf16).
DType cache_dtype(const StepModelOptions& o) {
  const DType d = o.kv_dtype.value_or(DType::BF16);
  if (d != DType::BF16 && d != DType::F8E4M3) {
    throw Error(std::string("serving options: kvCacheDtype ") + dtype_name(d) +
                " is not available on the CUDA backend, whose KV cache is bf16 or fp8");
  }
  return d;
}

// Runs one step as large as the scheduler can plan (max_batch_size rows and the step's token
// budget) on a throw-away cache, so the model's scratch buffers reach their serving size before
// free memory is measured, and never grow (or fail to) while serving.
void reserve_largest_step(cuda::CudaModel& model, const StepModelOptions& o) {
  const int64_t tokens = std::max(o.max_batched_tokens, o.max_batch_size);
  int64_t sequences = std::max<int64_t>(o.max_batch_size, 1);
  int64_t per = (tokens + sequences - 1) / sequences;
  if (per > o.max_seq_len) {
    per = o.max_seq_len;
    sequences = (tokens + per - 1) / per;
  }
  const int64_t pages_each = (per + o.page_size - 1) / o.page_size;
  cuda::CudaKvCache cache = model.new_cache(sequences * pages_each, o.page_size, cache_dtype(o));
  std::vector<std::vector<int32_t>> tables(static_cast<size_t>(sequences));
  std::vector<int32_t> ids(static_cast<size_t>(per));
  for (int64_t i = 0; i < per; ++i) ids[static_cast<size_t>(i)] = static_cast<int32_t>(i % model.config().vocab_size);
  ForwardBatch batch;
  for (int64_t s = 0; s < sequences; ++s) {
    auto& table = tables[static_cast<size_t>(s)];
    for (int64_t p = 0; p < pages_each; ++p) table.push_back(static_cast<int32_t>(s * pages_each + p));
    batch.add(ids.data(), per, 0, table.data(), true);
  }
  std::vector<int32_t> next(static_cast<size_t>(sequences));
  model.forward(batch, cache, next.data());
}

// Past the engine's max_batch every step would run GEMM tactics tuned for fewer rows (H200, 8B fp8
// batch 64 on a max-batch-8 engine: 4.43 ms a step against 3.67), silently; refused before the
// weights go to the GPU.
std::shared_ptr<const Engine> servable(std::shared_ptr<const Engine> engine, const StepModelOptions& o) {
  const int64_t max_batch = engine->limit("max_batch");
  if (o.max_batch_size > max_batch) {
    throw Error("serving options: maxBatchSize (" + std::to_string(o.max_batch_size) + ") is past the engine's max_batch (" +
                std::to_string(max_batch) + "), the batch its GEMMs were tuned for: serve at most " +
                std::to_string(max_batch) + ", or build the engine for " + std::to_string(o.max_batch_size) +
                " (spec.engine.maxBatchSize, kiln-native build --max-batch); in the runtime image it is "
                "KILN_MAX_BATCH_SIZE");
  }
  return engine;
}

KvCacheSize size_for(cuda::CudaModel& model, const StepModelOptions& o) {
  reserve_largest_step(model, o);
  size_t free_bytes = 0, total_bytes = 0;
  KILN_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  KvMemoryBudget b;
  b.available_bytes = static_cast<int64_t>(free_bytes);
  b.available_what = "free GPU memory after weights and scratch";
  b.default_fraction = kDefaultGpuFraction;
  const ModelConfig& c = model.config();
  return size_kv_cache(o.kv, b, kv_page_bytes(c.num_layers, o.page_size, c.kv_dim(), cache_dtype(o)),
                       (o.max_seq_len + o.page_size - 1) / o.page_size);
}

}  // namespace

CudaStepModel::CudaStepModel(std::shared_ptr<const Engine> engine, const StepModelOptions& o)
    : model_(servable(std::move(engine), o)),
      size_(size_for(model_, o)),
      cache_(std::make_unique<cuda::CudaKvCache>(model_.new_cache(size_.pages, o.page_size, cache_dtype(o)))) {}

void CudaStepModel::forward(const ForwardBatch& batch, const RowRequest* rows, int32_t* tokens, float* logits) {
  if (!tokens) {
    token_scratch_.resize(static_cast<size_t>(std::max<int64_t>(batch.logit_rows(), 1)));
    tokens = token_scratch_.data();
  }
  model_.forward(batch, *cache_, tokens, logits, rows);
}

}  // namespace kiln

#endif
