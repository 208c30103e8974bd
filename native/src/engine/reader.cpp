#include "engine/reader.h"

#include <atomic>
#include <cstring>
#include <set>

#include "core/error.h"
#include "core/sha256.h"
#include "core/thread_pool.h"
#include "engine/format.h"

namespace kiln {

namespace {

uint32_t get_u32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

uint64_t get_u64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

std::string bytes_hex(const uint8_t* p, size_t n) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    out += digits[p[i] >> 4];
    out += digits[p[i] & 0xf];
  }
  return out;
}

SectionEntry parse_section(const Json& j, size_t index, uint64_t data_offset, uint64_t file_size,
                           const std::string& path) {
  std::string where = path + ": section #" + std::to_string(index);
  SectionEntry s;
  try {
    s.name = j.at("name").get<std::string>();
    where = path + ": section " + s.name;
    s.dtype = dtype_from_name(j.at("dtype").get<std::string>());
    s.layout = layout_from_name(j.at("layout").get<std::string>());
    s.bytes = j.at("bytes").get<uint64_t>();
    const uint64_t relative = j.at("offset").get<uint64_t>();
    s.sha256 = j.at("sha256").get<std::string>();
    uint64_t expected = dtype_size(s.dtype);
    for (const auto& d : j.at("shape")) {
      const int64_t v = d.get<int64_t>();
      if (v < 0 || v > (int64_t{1} << 40)) throw Error(where + ": bad dimension " + d.dump());
      s.shape.push_back(v);
      if (__builtin_mul_overflow(expected, static_cast<uint64_t>(v), &expected)) throw Error(where + ": shape too large");
    }
    if (expected != s.bytes) throw Error(where + ": " + std::to_string(s.bytes) + " bytes do not match its shape and dtype");
    if (relative % kSectionAlignment != 0) throw Error(where + ": offset is not 256-byte aligned");
    const uint64_t available = file_size - data_offset;
    if (relative > available || s.bytes > available - relative) {
      throw Error(where + ": ends at byte " + std::to_string(static_cast<unsigned long long>(data_offset + relative + s.bytes)) +
                  " but the file has " + std::to_string(file_size) + " bytes (truncated?)");
    }
    s.offset = data_offset + relative;
  } catch (const Json::exception& e) {
    throw Error(where + ": malformed entry: " + e.what());
  } catch (const Error& e) {
    if (std::string(e.what()).rfind(path, 0) == 0) throw;
    throw Error(where + ": " + e.what());
  }
  return s;
}

}  // namespace

EngineFile read_engine_file(const std::string& path, ThreadPool* pool, SectionCheck check) {
  EngineFile ef;
  ef.file = std::make_shared<MappedFile>(path);
  const uint8_t* p = ef.file->data();
  const uint64_t size = ef.file->size();
  if (size < kEnginePreambleSize) {
    throw Error(path + ": truncated: " + std::to_string(size) + " bytes, smaller than the engine preamble");
  }
  if (std::memcmp(p, kEngineMagic, sizeof kEngineMagic) != 0) throw Error(path + ": not a Kiln engine (bad magic)");
  const uint32_t version = get_u32(p + 8);
  if (version != kEngineFormatVersion) {
    throw Error(path + ": engine format version " + std::to_string(version) + ", this build reads version " +
                std::to_string(kEngineFormatVersion) + "; rebuild the engine");
  }
  if (get_u32(p + 12) != kEnginePreambleSize) throw Error(path + ": corrupted preamble (size field)");
  const uint64_t header_size = get_u64(p + 16);
  const uint64_t data_offset = get_u64(p + 24);
  if (header_size > size - kEnginePreambleSize) {
    throw Error(path + ": truncated: header of " + std::to_string(header_size) + " bytes does not fit the file");
  }
  const uint8_t* header_bytes = p + kEnginePreambleSize;
  if (sha256_hex(header_bytes, header_size) != bytes_hex(p + 32, 32)) {
    throw Error(path + ": header checksum mismatch (file corrupted)");
  }
  if (data_offset % kSectionAlignment != 0 || data_offset < kEnginePreambleSize + header_size || data_offset > size) {
    throw Error(path + ": corrupted preamble (data offset " + std::to_string(data_offset) + ")");
  }
  try {
    ef.header = Json::parse(header_bytes, header_bytes + header_size);
  } catch (const Json::exception& e) {
    throw Error(path + ": header is not valid JSON: " + e.what());
  }
  if (!ef.header.is_object() || !ef.header.contains("sections") || !ef.header["sections"].is_array()) {
    throw Error(path + ": header has no \"sections\" list");
  }
  std::set<std::string> names;
  for (size_t i = 0; i < ef.header["sections"].size(); ++i) {
    ef.sections.push_back(parse_section(ef.header["sections"][i], i, data_offset, size, path));
    if (!names.insert(ef.sections.back().name).second) {
      throw Error(path + ": section " + ef.sections.back().name + " appears twice");
    }
  }
  if (check == SectionCheck::Bounds) return ef;

  std::vector<std::string> actual(ef.sections.size());
  for_chunks(pool, ef.sections.size(), 1, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) actual[i] = sha256_hex(p + ef.sections[i].offset, ef.sections[i].bytes);
  });
  for (size_t i = 0; i < ef.sections.size(); ++i) {
    if (actual[i] != ef.sections[i].sha256) {
      throw Error(path + ": section " + ef.sections[i].name + " sha256 mismatch (file corrupted)");
    }
  }
  return ef;
}

void check_engine_target(const Json& header, const std::string& path, const std::string& fingerprint) {
  std::string built_for = "<missing>";
  if (header.contains("target") && header["target"].is_object() && header["target"].contains("fingerprint") &&
      header["target"]["fingerprint"].is_string()) {
    built_for = header["target"]["fingerprint"].get<std::string>();
  }
  if (built_for != fingerprint) {
    throw Error(path + ": engine was built for target \"" + built_for + "\" but this machine is \"" + fingerprint +
                "\"; build an engine for this target");
  }
}

// Section checksums are verified on a pool the size of the CPUs this process may use: one thread
// took ~12 s over a 16 GB engine.
std::string inspect(const std::string& path, SectionCheck check) {
  if (check == SectionCheck::Bounds) return read_engine_file(path, nullptr, check).header.dump(2);
  ThreadPool pool;
  return read_engine_file(path, &pool, check).header.dump(2);
}

}  // namespace kiln
