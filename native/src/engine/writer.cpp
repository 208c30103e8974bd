#include "engine/writer.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

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

// The file's bytes in order, as pieces of memory: the preamble, the header, each section's zero
// padding and bytes. Writing and hashing both walk them, so the two can run side by side.
struct Piece {
  const void* data;
  size_t size;
  size_t sections_done;  // sections complete once this piece is written (for on_section)
};

// The digest of the pieces in order, on a thread of its own: SHA-256 of one stream cannot be split,
// but it need not wait for the disk. `stop` ends it early (the write failed or was cancelled).
class BackgroundDigest {
 public:
  BackgroundDigest(const std::vector<Piece>& pieces, bool own_thread) : pieces_(pieces) {
    if (own_thread) thread_ = std::thread([this] { run(); });
  }
  ~BackgroundDigest() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  std::string digest() {
    if (thread_.joinable()) thread_.join();
    else run();
    return hash_.hex_digest();
  }

 private:
  void run() {
    for (const Piece& piece : pieces_) {
      if (stop_) return;
      hash_.update(piece.data, piece.size);
    }
  }
  const std::vector<Piece>& pieces_;
  Sha256Stream hash_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace

WrittenEngine write_engine(const std::string& path, Json header, const std::vector<TensorBlob>& tensors,
                           const std::function<void(size_t, size_t)>& on_section, ThreadPool* pool) {
  // Each section's own hash is independent of the others: one a chunk on the pool where there is one.
  std::vector<std::string> hashes(tensors.size());
  for_chunks(pool, tensors.size(), 1, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) hashes[i] = sha256_hex(tensors[i].bytes.data(), tensors[i].bytes.size());
  });
  Json sections = Json::array();
  uint64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorBlob& t = tensors[i];
    sections.push_back(Json{{"name", t.name},
                            {"dtype", dtype_name(t.dtype)},
                            {"shape", t.shape},
                            {"layout", layout_name(t.layout)},
                            {"offset", offset},
                            {"bytes", t.bytes.size()},
                            {"sha256", hashes[i]}});
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

  static const uint8_t zeros[kSectionAlignment] = {};
  std::vector<Piece> pieces{{preamble, sizeof preamble, 0}, {header_text.data(), header_text.size(), 0}};
  uint64_t end = sizeof preamble + header_text.size();
  const Json& listed = header["sections"];
  for (size_t i = 0; i < tensors.size(); ++i) {
    const uint64_t start = data_offset + listed[i]["offset"].get<uint64_t>();
    for (; end < start; end += std::min<uint64_t>(start - end, sizeof zeros)) {
      pieces.push_back({zeros, static_cast<size_t>(std::min<uint64_t>(start - end, sizeof zeros)), 0});
    }
    pieces.push_back({tensors[i].bytes.data(), tensors[i].bytes.size(), i + 1});
    end += tensors[i].bytes.size();
  }

  const std::string tmp = path + ".tmp";
  try {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw IoError(tmp + ": cannot create: " + std::strerror(errno));
    BackgroundDigest digest(pieces, pool && pool->size() > 1);
    for (const Piece& piece : pieces) {
      out.write(static_cast<const char*>(piece.data), static_cast<std::streamsize>(piece.size));
      if (!out) throw IoError(tmp + ": write failed: " + std::strerror(errno));
      if (piece.sections_done && on_section) on_section(piece.sections_done, tensors.size());
    }
    out.close();
    if (!out) throw IoError(tmp + ": close failed: " + std::strerror(errno));
    WrittenEngine result{digest.digest(), end};
    std::filesystem::rename(tmp, path);
    return result;
  } catch (...) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    throw;
  }
}

}  // namespace kiln
