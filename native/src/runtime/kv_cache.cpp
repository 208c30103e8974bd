#include "runtime/kv_cache.h"

#include "core/error.h"

namespace kiln {

KvCache::KvCache(int64_t layers, int64_t pages, int64_t page_size, int64_t kv_dim, DType dtype)
    : layers_(layers), pages_(pages), page_size_(page_size), kv_dim_(kv_dim), dtype_(dtype) {
  if (dtype != DType::F32 && dtype != DType::BF16) {
    throw Error(std::string("KV cache: dtype ") + dtype_name(dtype) + " is not supported (fp32 or bf16)");
  }
  if (layers < 1 || pages < 1 || page_size < 1 || kv_dim < 1) {
    throw Error("KV cache: layers (" + std::to_string(layers) + "), pages (" + std::to_string(pages) +
                "), page size (" + std::to_string(page_size) + ") and kv_dim (" + std::to_string(kv_dim) +
                ") must all be positive");
  }
  const size_t bytes = static_cast<size_t>(layers * pages * page_size * kv_dim) * dtype_size(dtype);
  keys_.resize(bytes);
  values_.resize(bytes);
}

void KvCache::write(int64_t layer, int32_t page, int64_t slot, const float* key, const float* value) {
  const size_t row = static_cast<size_t>((page * page_size_ + slot) * kv_dim_) * dtype_size(dtype_);
  const size_t at = layer_offset(layer) + row;
  encode_from_f32(dtype_, key, keys_.data() + at, static_cast<size_t>(kv_dim_));
  encode_from_f32(dtype_, value, values_.data() + at, static_cast<size_t>(kv_dim_));
}

DType kv_cache_dtype_from_name(const std::string& name) {
  if (name == "fp32") return DType::F32;
  if (name == "bf16") return DType::BF16;
  if (name == "fp8") return DType::F8E4M3;  // E4M3; only the CUDA backend's cache holds it
  throw Error("kvCacheDtype: \"" + name + "\" is not supported (fp32, bf16 or fp8)");
}

const char* kv_cache_dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "fp32";
    case DType::BF16: return "bf16";
    case DType::F8E4M3: return "fp8";
    default: return dtype_name(dtype);  // no cache is kept in any other type
  }
}

}  // namespace kiln
