#!/usr/bin/env bash
# GPU benchmark, one run on the GPU machine (see bench/gpu/bench.py for what it measures).
# Usage (from a device call, with .gpu carried): bash bench/gpu/run.sh [--models llama3.2-1b,llama3-8b] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x native/build-cuda/kiln-native ] || bash test/gpu/build_native.sh
export LD_LIBRARY_PATH=$PWD/.gpu/deps/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
exec python3 bench/gpu/bench.py --work "${KILN_BENCH_WORK:-/tmp/kiln-bench-gpu}" "$@"
