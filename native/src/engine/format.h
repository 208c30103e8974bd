#pragma once

#include <cstddef>
#include <cstdint>

namespace kiln {

// engine.kiln layout (all integers little-endian):
//   [0, 8)    magic "KILNENG\0"
//   [8, 12)   u32 format version
//   [12, 16)  u32 preamble size (64)
//   [16, 24)  u64 header size in bytes
//   [24, 32)  u64 data offset: where sections start, a multiple of 256
//   [32, 64)  sha256 of the header bytes
//   [64, ...) header: UTF-8 JSON; its "sections" list names every section with dtype, shape,
//             layout, offset (relative to the data offset, a multiple of 256), bytes and sha256
//   sections, each starting on a 256-byte boundary of the file
inline constexpr char kEngineMagic[8] = {'K', 'I', 'L', 'N', 'E', 'N', 'G', '\0'};
inline constexpr uint32_t kEngineFormatVersion = 1;
inline constexpr size_t kEnginePreambleSize = 64;
inline constexpr size_t kSectionAlignment = 256;

}  // namespace kiln
