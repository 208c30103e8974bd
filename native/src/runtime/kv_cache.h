#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace kiln {

// Keys and values of every sequence, in fixed-size pages shared by all of them. A sequence owns an
// ordered list of page ids (its block table, kept by the BlockManager); position p of a sequence
// lives in page table[p / page_size], slot p % page_size. Per layer, keys and values are each laid
// out [page][slot][kv_heads * head_dim], so the rows of one page are contiguous for the attention
// kernel. The dtype is fp32 or bf16 (half the memory, rounded to nearest even on write); compute
// stays fp32. The CUDA backend keeps the same layout in device memory.
class KvCache {
 public:
  KvCache(int64_t layers, int64_t pages, int64_t page_size, int64_t kv_dim, DType dtype);

  int64_t layers() const { return layers_; }
  int64_t pages() const { return pages_; }
  int64_t page_size() const { return page_size_; }
  int64_t kv_dim() const { return kv_dim_; }
  DType dtype() const { return dtype_; }

  // Stores one position's key and value rows (kv_dim fp32 each), converting to the cache dtype.
  void write(int64_t layer, int32_t page, int64_t slot, const float* key, const float* value);

  // The first byte of a layer's keys / values; row (page, slot) starts at row_index * kv_dim elements.
  const uint8_t* layer_keys(int64_t layer) const { return keys_.data() + layer_offset(layer); }
  const uint8_t* layer_values(int64_t layer) const { return values_.data() + layer_offset(layer); }

 private:
  size_t layer_offset(int64_t layer) const {
    return static_cast<size_t>(layer * pages_ * page_size_ * kv_dim_) * dtype_size(dtype_);
  }

  int64_t layers_, pages_, page_size_, kv_dim_;
  DType dtype_;
  std::vector<uint8_t> keys_;
  std::vector<uint8_t> values_;
};

// "fp32", "bf16" or "fp8" (E4M3); throws an Error naming the option otherwise.
DType kv_cache_dtype_from_name(const std::string& name);
// The inverse: the kvCacheDtype spelling of a cache's type (dtype_name spells them f32 / f8e4m3).
const char* kv_cache_dtype_name(DType dtype);

}  // namespace kiln
