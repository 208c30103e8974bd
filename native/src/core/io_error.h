#pragma once

#include "core/error.h"

namespace kiln {

// A failure of the machine, not of the inputs: a read, write, mmap or create that the OS refused
// (full disk, I/O error, a file removed underneath). Callers that retry (the build Job) may retry
// these; any other kiln::Error is about the checkpoint or options and fails the same way again.
class IoError : public Error {
 public:
  using Error::Error;
};

}  // namespace kiln
