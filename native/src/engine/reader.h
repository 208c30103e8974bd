#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/json.h"
#include "core/layout.h"
#include "core/mapped_file.h"
#include "core/thread_pool.h"

namespace kiln {

struct SectionEntry {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  WeightLayout layout = WeightLayout::Row;
  uint64_t offset = 0;  // absolute, in the file
  uint64_t bytes = 0;
  std::string sha256;
};

struct EngineFile {
  std::shared_ptr<MappedFile> file;
  Json header;
  std::vector<SectionEntry> sections;
};

// Maps an engine file and checks everything that can be checked without knowing the target: magic,
// format version, header checksum and JSON, every section's bounds, size and sha256. Every offset
// and size read from the file is bounds-checked first, so a corrupted or truncated file gives an
// Error naming the problem, never a crash. `pool` hashes sections in parallel when given.
EngineFile read_engine_file(const std::string& path, ThreadPool* pool = nullptr);

// Refuses an engine whose target fingerprint differs from `fingerprint` (the running machine's).
void check_engine_target(const Json& header, const std::string& path, const std::string& fingerprint);

// The header of a verified engine file as pretty JSON; checks checksums but not the target, so an
// engine built for another machine can still be inspected.
std::string inspect(const std::string& path);

}  // namespace kiln
