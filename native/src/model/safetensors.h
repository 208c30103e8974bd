#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/floats.h"
#include "core/mapped_file.h"
#include "core/thread_pool.h"

namespace kiln {

// A tensor as it lies in a checkpoint file; `data` points into the file's memory map.
struct SourceTensor {
  std::string name;
  std::string dtype_name;  // safetensors spelling: F32, BF16, ...
  bool is_float = false;   // F32, F16 or BF16: the dtypes weights may have
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t bytes = 0;
  std::string file;

  int64_t numel() const;
};

// All tensors of a HF checkpoint directory: a single model.safetensors or the shards listed in
// model.safetensors.index.json. Files stay mapped for the lifetime of the Checkpoint.
class Checkpoint {
 public:
  static Checkpoint open(const std::string& directory);

  const SourceTensor* find(const std::string& name) const;
  const std::map<std::string, SourceTensor>& tensors() const { return tensors_; }
  const std::string& directory() const { return directory_; }

  // Decodes a float tensor into fp32 (in chunks on the pool's threads, when given one).
  Floats to_f32(const SourceTensor& tensor, ThreadPool* pool = nullptr) const;
  // Drops the tensor's pages from memory once it has been decoded (MappedFile::release).
  void release(const SourceTensor& tensor) const;

 private:
  void add_file(const std::string& path);

  std::string directory_;
  std::vector<std::shared_ptr<MappedFile>> files_;
  std::map<std::string, SourceTensor> tensors_;
};

}  // namespace kiln
