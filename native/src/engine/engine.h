#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/json.h"
#include "core/thread_pool.h"
#include "engine/reader.h"
#include "engine/tensor_blob.h"
#include "model/config.h"

namespace kiln {

// A tensor of a loaded engine; `data` points into the engine's storage (file map or owned blobs).
struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  WeightLayout layout = WeightLayout::Row;
  const uint8_t* data = nullptr;
  size_t bytes = 0;
};

// An engine ready to run: verified header, model config and every tensor by name.
class Engine {
 public:
  // Reads and verifies `path` (see read_engine_file) and refuses an engine built for another target.
  static std::shared_ptr<const Engine> load(const std::string& path, ThreadPool* pool = nullptr,
                                            SectionCheck check = SectionCheck::Sha256);
  // An engine assembled in memory by the compiler (calibration and tests run the model before a file exists).
  static std::shared_ptr<const Engine> from_tensors(Json header, std::vector<TensorBlob> tensors);
  // An engine over tensors it does not own (the compiler's fp32 graph, run for calibration without
  // a copy of it): the caller keeps them alive and unchanged for the engine's lifetime.
  static std::shared_ptr<const Engine> borrowing(Json header, const std::vector<TensorView>& tensors);

  const Json& header() const { return header_; }
  const ModelConfig& config() const { return config_; }
  const std::string& source() const { return source_; }

  // header limits.<key> (max_seq_len, max_batch): a positive integer of at most 2^22, which the
  // runtimes size their buffers by; throws an Error naming the engine and the field.
  int64_t limit(const char* key) const;

  const TensorView* find(const std::string& name) const;
  // Throws an Error naming the engine and the missing tensor.
  const TensorView& tensor(const std::string& name) const;

 private:
  Engine() = default;
  void index(const std::string& name, DType dtype, std::vector<int64_t> shape, WeightLayout layout,
             const uint8_t* data, size_t bytes);

  std::string source_;
  Json header_;
  ModelConfig config_;
  std::map<std::string, TensorView> tensors_;
  std::shared_ptr<const void> storage_;
};

}  // namespace kiln
