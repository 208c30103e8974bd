#pragma once

#include "compiler/tactics.h"

namespace kiln {

// The CPU GEMM tactics: register-blocked kernels over R output rows x MB activation rows, reading
// the weight row-major or as R-row panels, on one thread or the whole pool; weights of every dtype
// are widened to fp32 inside the kernel, accumulation is fp32.
void register_cpu_gemm_tactics(TacticRegistry& registry);

inline constexpr const char* kDefaultCpuGemmTactic = "cpu.row.r4m4.tall";

}  // namespace kiln
