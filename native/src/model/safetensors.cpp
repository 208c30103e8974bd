#include "model/safetensors.h"

#include <filesystem>
#include <set>

#include "core/error.h"
#include "core/json.h"

namespace kiln {

namespace fs = std::filesystem;

int64_t SourceTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

struct SafetensorsDType {
  const char* name;
  size_t size;
  bool is_float;
  DType dtype;
};

constexpr SafetensorsDType kDTypes[] = {
    {"F32", 4, true, DType::F32},   {"F16", 2, true, DType::F16},    {"BF16", 2, true, DType::BF16},
    {"F64", 8, false, DType::F32},  {"I64", 8, false, DType::F32},   {"I32", 4, false, DType::F32},
    {"I16", 2, false, DType::F32},  {"I8", 1, false, DType::I8},     {"U8", 1, false, DType::U8},
    {"BOOL", 1, false, DType::U8},  {"F8_E4M3", 1, false, DType::F8E4M3}, {"F8_E5M2", 1, false, DType::U8},
};

}  // namespace

Checkpoint Checkpoint::open(const std::string& directory) {
  Checkpoint ckpt;
  ckpt.directory_ = directory;
  const fs::path dir(directory);
  if (!fs::is_directory(dir)) throw Error(directory + ": model directory does not exist");
  const fs::path index = dir / "model.safetensors.index.json";
  if (fs::exists(index)) {
    Json j;
    try {
      j = Json::parse(read_text_file(index.string()));
    } catch (const Json::exception& e) {
      throw Error(index.string() + ": invalid JSON: " + e.what());
    }
    if (!j.contains("weight_map") || !j["weight_map"].is_object()) {
      throw Error(index.string() + ": field \"weight_map\" is missing");
    }
    std::set<std::string> shards;
    for (const auto& [name, file] : j["weight_map"].items()) {
      if (!file.is_string()) throw Error(index.string() + ": weight_map entry " + name + " is not a file name");
      const std::string shard = file.get<std::string>();
      if (shard.find('/') != std::string::npos) {
        throw Error(index.string() + ": shard \"" + shard + "\" must be a file in the model directory");
      }
      shards.insert(shard);
    }
    for (const auto& shard : shards) ckpt.add_file((dir / shard).string());
    for (const auto& [name, file] : j["weight_map"].items()) {
      const auto it = ckpt.tensors_.find(name);
      if (it == ckpt.tensors_.end()) {
        throw Error(index.string() + ": tensor " + name + " is listed in " + file.get<std::string>() +
                    " but that shard does not contain it");
      }
    }
  } else if (fs::exists(dir / "model.safetensors")) {
    ckpt.add_file((dir / "model.safetensors").string());
  } else {
    throw Error(directory + ": no model.safetensors or model.safetensors.index.json");
  }
  return ckpt;
}

void Checkpoint::add_file(const std::string& path) {
  auto file = std::make_shared<MappedFile>(path);
  files_.push_back(file);
  if (file->size() < 8) throw Error(path + ": truncated safetensors file (no header length)");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | file->data()[i];
  if (header_len > file->size() - 8) throw Error(path + ": header length exceeds the file size");
  Json header;
  try {
    header = Json::parse(file->data() + 8, file->data() + 8 + header_len);
  } catch (const Json::exception& e) {
    throw Error(path + ": invalid safetensors header: " + e.what());
  }
  if (!header.is_object()) throw Error(path + ": safetensors header is not an object");
  const uint8_t* base = file->data() + 8 + header_len;
  const size_t data_size = file->size() - 8 - header_len;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") continue;
    const std::string where = path + ": tensor " + name;
    try {
      SourceTensor t;
      t.name = name;
      t.file = path;
      t.dtype_name = info.at("dtype").get<std::string>();
      size_t elem = 0;
      for (const auto& d : kDTypes) {
        if (t.dtype_name == d.name) {
          elem = d.size;
          t.is_float = d.is_float;
          t.dtype = d.dtype;
        }
      }
      if (elem == 0) throw Error(where + ": unknown dtype " + t.dtype_name);
      for (const auto& d : info.at("shape")) {
        const int64_t v = d.get<int64_t>();
        if (v < 0 || v > (int64_t{1} << 40)) throw Error(where + ": bad dimension " + d.dump());
        t.shape.push_back(v);
      }
      const auto& offsets = info.at("data_offsets");
      const uint64_t begin = offsets.at(0).get<uint64_t>();
      const uint64_t end = offsets.at(1).get<uint64_t>();
      if (begin > end || end > data_size) throw Error(where + ": data offsets lie outside the file");
      // numel * elem can overflow only for absurd shapes, which the per-dimension bound above excludes
      // together with this check of the product against the file size.
      long double expected = static_cast<long double>(elem);
      for (int64_t d : t.shape) expected *= static_cast<long double>(d);
      if (expected != static_cast<long double>(end - begin)) {
        throw Error(where + ": byte size " + std::to_string(end - begin) + " does not match its shape and dtype");
      }
      t.data = base + begin;
      t.bytes = end - begin;
      if (tensors_.count(name)) throw Error(where + ": tensor appears in more than one file");
      tensors_.emplace(name, std::move(t));
    } catch (const Json::exception& e) {
      throw Error(where + ": malformed entry: " + e.what());
    }
  }
}

const SourceTensor* Checkpoint::find(const std::string& name) const {
  const auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

void Checkpoint::release(const SourceTensor& t) const {
  for (const auto& file : files_) {
    if (t.data >= file->data() && t.data < file->data() + file->size()) {
      file->release(t.data, t.bytes);
      return;
    }
  }
}

Floats Checkpoint::to_f32(const SourceTensor& t, ThreadPool* pool) const {
  if (!t.is_float) throw Error(t.file + ": tensor " + t.name + " has dtype " + t.dtype_name + ", expected F32/F16/BF16");
  Floats out(static_cast<size_t>(t.numel()));  // every element written below, on the pool
  const size_t width = dtype_size(t.dtype);
  for_chunks(pool, out.size(), kElementChunk, [&](size_t begin, size_t end) {
    decode_to_f32(t.dtype, t.data + begin * width, out.data() + begin, end - begin);
  });
  return out;
}

}  // namespace kiln
