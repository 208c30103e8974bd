#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/json.h"
#include "core/thread_pool.h"
#include "engine/tensor_blob.h"

namespace kiln {

struct WrittenEngine {
  std::string sha256;  // of the whole file
  uint64_t bytes = 0;
};

// Writes header + sections to `path` atomically (a temporary file renamed into place). The header's
// "sections" list is filled in here. `on_section(done, total)` may throw to cancel; the temporary
// file is removed then. With a pool the sections are hashed on it and the whole file's digest is
// computed beside the write (the same bytes and digests either way).
WrittenEngine write_engine(const std::string& path, Json header, const std::vector<TensorBlob>& tensors,
                           const std::function<void(size_t, size_t)>& on_section = {}, ThreadPool* pool = nullptr);

}  // namespace kiln
