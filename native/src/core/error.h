#pragma once

#include <stdexcept>
#include <string>

namespace kiln {

// Every failure the user can cause (bad checkpoint, bad engine file, bad option) is an Error whose
// message names the file, tensor or field at fault; callers print what() as the one-line diagnosis.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Thrown from inside a build when the caller's cancel flag is raised; not a failure of the inputs.
class Cancelled : public Error {
 public:
  Cancelled() : Error("build cancelled") {}
};

}  // namespace kiln
