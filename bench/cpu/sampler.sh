#!/usr/bin/env bash
# Host sampler micro-benchmark (bench/cpu/sampler.cpp) against the Release kiln_core library.
# Usage: bench/cpu/sampler.sh [tokens per round]
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ -d native/build ]] || bash native/build.sh
cmake --build native/build -j2 --target kiln_core
c++ -std=c++20 -O3 -DNDEBUG -march=x86-64-v3 -Inative/src bench/cpu/sampler.cpp native/build/libkiln_core.a \
  -o native/build/kiln-sampler-bench
exec native/build/kiln-sampler-bench "$@"
