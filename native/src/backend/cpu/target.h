#pragma once

#include <string>

#include "core/json.h"

namespace kiln {

// The CPU target an engine is built for: architecture plus the instruction sets the compiled kernels
// use. An engine only runs where this string matches, like a GPU engine only runs on its SM arch.
std::string cpu_target_fingerprint();

// Fingerprint plus facts recorded for people (CPU model, threads); only the fingerprint is compared.
Json cpu_target_info();

// Throws kiln::Error when this CPU lacks an instruction set the kernels were compiled for.
void require_cpu_features();

}  // namespace kiln
