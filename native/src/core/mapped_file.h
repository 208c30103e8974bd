#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace kiln {

// A read-only memory map of a whole file. Weights are read in place from the map so that loading an
// engine or a checkpoint does not copy gigabytes.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Drops the resident pages wholly inside [p, p + bytes) (a range of this map), as after a one-time
  // read: they no longer count against the process's memory, and a later read maps them again from
  // the file.
  void release(const uint8_t* p, size_t bytes) const;

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

std::string read_text_file(const std::string& path);

}  // namespace kiln
