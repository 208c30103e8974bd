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

// What read_engine_file checks of the sections' bytes. Bounds: their offsets and sizes only, for a
// caller that has just verified the whole file's sha256 against the digest it expects (the runtime's
// download): hashing every section again would read the whole file once more for nothing.
enum class SectionCheck { Sha256, Bounds };

// Maps an engine file and checks everything that can be checked without knowing the target: magic,
// format version, header checksum and JSON, every section's bounds, size and (SectionCheck::Sha256)
// sha256. Every offset and size read from the file is bounds-checked first, so a corrupted or
// truncated file gives an Error naming the problem, never a crash. `pool` hashes sections in
// parallel when given.
EngineFile read_engine_file(const std::string& path, ThreadPool* pool = nullptr,
                            SectionCheck check = SectionCheck::Sha256);

// Refuses an engine whose target fingerprint differs from `fingerprint` (the running machine's).
void check_engine_target(const Json& header, const std::string& path, const std::string& fingerprint);

// The header of a verified engine file as pretty JSON; checks checksums (the sections' with
// SectionCheck::Sha256) but not the target, so an engine built for another machine can still be
// inspected.
std::string inspect(const std::string& path, SectionCheck check = SectionCheck::Sha256);

}  // namespace kiln
