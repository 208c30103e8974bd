#include "engine/writer.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/io_error.h"
#include "core/sha256.h"
#include "engine/format.h"

namespace kiln {

namespace {

uint64_t align_up(uint64_t v) { return (v + kSectionAlignment - 1) / kSectionAlignment * kSectionAlignment; }

void put_u32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

void put_u64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

void hex_to_bytes(const std::string& hex, uint8_t* out) {
  for (size_t i = 0; i < hex.size() / 2; ++i) out[i] = static_cast<uint8_t>(std::stoi(hex.substr(2 * i, 2), nullptr, 16));
}

class HashingWriter {
 public:
  HashingWriter(std::ofstream& out, const std::string& path) : out_(out), path_(path) {}
  void write(const void* data, size_t size) {
    out_.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
    if (!out_) throw IoError(path_ + ": write failed: " + std::strerror(errno));
    hash_.update(data, size);
    written_ += size;
  }
  void pad_to(uint64_t offset) {
    static const uint8_t zeros[kSectionAlignment] = {};
    while (written_ < offset) write(zeros, std::min<uint64_t>(offset - written_, sizeof zeros));
  }
  uint64_t written() const { return written_; }
  std::string digest() { return hash_.hex_digest(); }

 private:
  std::ofstream& out_;
  const std::string& path_;
  Sha256Stream hash_;
  uint64_t written_ = 0;
};

}  // namespace

WrittenEngine write_engine(const std::string& path, Json header, const std::vector<TensorBlob>& tensors,
                           const std::function<void(size_t, size_t)>& on_section) {
  Json sections = Json::array();
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    sections.push_back(Json{{"name", t.name},
                            {"dtype", dtype_name(t.dtype)},
                            {"shape", t.shape},
                            {"layout", layout_name(t.layout)},
                            {"offset", offset},
                            {"bytes", t.bytes.size()},
                            {"sha256", sha256_hex(t.bytes.data(), t.bytes.size())}});
    offset = align_up(offset + t.bytes.size());
  }
  header["sections"] = std::move(sections);
  const std::string header_text = header.dump();
  const uint64_t data_offset = align_up(kEnginePreambleSize + header_text.size());

  uint8_t preamble[kEnginePreambleSize] = {};
  std::memcpy(preamble, kEngineMagic, sizeof kEngineMagic);
  put_u32(preamble + 8, kEngineFormatVersion);
  put_u32(preamble + 12, kEnginePreambleSize);
  put_u64(preamble + 16, header_text.size());
  put_u64(preamble + 24, data_offset);
  hex_to_bytes(sha256_hex(header_text.data(), header_text.size()), preamble + 32);

  const std::string tmp = path + ".tmp";
  try {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw IoError(tmp + ": cannot create: " + std::strerror(errno));
    HashingWriter w(out, tmp);
    w.write(preamble, sizeof preamble);
    w.write(header_text.data(), header_text.size());
    const Json& listed = header["sections"];
    for (size_t i = 0; i < tensors.size(); ++i) {
      w.pad_to(data_offset + listed[i]["offset"].get<uint64_t>());
      w.write(tensors[i].bytes.data(), tensors[i].bytes.size());
      if (on_section) on_section(i + 1, tensors.size());
    }
    out.close();
    if (!out) throw IoError(tmp + ": close failed: " + std::strerror(errno));
    WrittenEngine result{w.digest(), w.written()};
    std::filesystem::rename(tmp, path);
    return result;
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    throw;
  }
}

}  // namespace kiln
