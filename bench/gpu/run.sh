#!/usr/bin/env bash
# GPU benchmark, one run on the GPU machine (see bench/gpu/bench.py for what it measures).
# Usage (from a device call, with .gpu carried): bash bench/gpu/run.sh [--models llama3.2-1b,llama3-8b] [--out DIR]
# KILN_CUDA_TIMELINE=1: everything runs on the timeline build (native/build-cuda-timeline, built here
# if absent), whose --kernel-costs tables add each family's critical path (backend/cuda/timeline.h).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "${KILN_CUDA_TIMELINE:-0}" = 1 ]; then
  [ -x native/build-cuda-timeline/kiln-native ] || bash test/gpu/build_native.sh kiln-native
  export KILN_NATIVE=$PWD/native/build-cuda-timeline/kiln-native
  # Its engines are built (and autotuned) by the timeline build too: kept apart from the serving build's.
  export KILN_BENCH_WORK=${KILN_BENCH_WORK:-/tmp/kiln-bench-gpu-timeline}
else
  [ -x native/build-cuda/kiln-native ] || bash test/gpu/build_native.sh
fi
export LD_LIBRARY_PATH=$PWD/.gpu/deps/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
exec python3 bench/gpu/bench.py --work "${KILN_BENCH_WORK:-/tmp/kiln-bench-gpu}" "$@"
