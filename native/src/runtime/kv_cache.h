#pragma once

#include <cstdint>
#include <vector>

namespace kiln {

// Where the model forward keeps keys and values of one sequence. The forward only asks for the row
// of a (layer, position), so the paged cache of the serving runtime slots in behind this interface.
class KvCache {
 public:
  virtual ~KvCache() = default;
  virtual int64_t capacity() const = 0;  // positions
  // kv_heads * head_dim fp32 values.
  virtual float* key(int64_t layer, int64_t position) = 0;
  virtual float* value(int64_t layer, int64_t position) = 0;
};

// One contiguous fp32 block per layer, sized for `capacity` positions up front.
class ContiguousKvCache final : public KvCache {
 public:
  ContiguousKvCache(int64_t layers, int64_t capacity, int64_t kv_dim)
      : capacity_(capacity), kv_dim_(kv_dim), keys_(static_cast<size_t>(layers * capacity * kv_dim)),
        values_(keys_.size()) {}

  int64_t capacity() const override { return capacity_; }
  float* key(int64_t layer, int64_t position) override { return keys_.data() + offset(layer, position); }
  float* value(int64_t layer, int64_t position) override { return values_.data() + offset(layer, position); }

 private:
  size_t offset(int64_t layer, int64_t position) const {
    return static_cast<size_t>((layer * capacity_ + position) * kv_dim_);
  }

  int64_t capacity_;
  int64_t kv_dim_;
  std::vector<float> keys_;
  std::vector<float> values_;
};

}  // namespace kiln
