#pragma once

// The CUDA backend's A/B switches (KILN_CUDA_GRAPHS, KILN_CUDA_PDL, ...): what a measurement turns
// off or on from the environment, read where the switch is used.

#include <cstdlib>
#include <optional>
#include <string>

namespace kiln::cuda {

// `name`=0 is off, any other value on; unset: none.
inline std::optional<bool> env_setting(const char* name) {
  const char* v = std::getenv(name);
  if (!v) return std::nullopt;
  return std::string(v) != "0";
}

inline bool env_switch(const char* name, bool fallback) { return env_setting(name).value_or(fallback); }

}  // namespace kiln::cuda
