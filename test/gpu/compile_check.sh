#!/usr/bin/env bash
# Run HERE, without a GPU: compiles the CUDA backend against the CUDA release of the GPU machine
# (13.0; KILN_CUDA_CHECK_VERSION to change it) so that an API or header it lacks fails here rather
# than in a device call (the twelfth session's kernel costs used a 13.1 runtime call and cost a call).
# nvcc, the runtime, cuBLAS and profiler headers come from PyPI wheels, unpacked once into
# ~/.cache/kiln/cuda-<version>. Host sources (backend, tools, GPU tests) are checked for syntax;
# each .cu is compiled for sm_90a, with ptxas's register counts and any wgmma serialization warning
# in the log (a few minutes on two cores: name files to check only those).
# --host: the host sources only (what the unit tier runs: test/gpu/compile_check.test.ts).
# KILN_CUDA_CHECK_DEFINES: more -D flags for every file (-DKILN_CUDA_TIMELINE=1: the timeline build).
# Usage: bash test/gpu/compile_check.sh [--host | native/src/backend/cuda/<file>.cu ...]
set -euo pipefail
cd "$(dirname "$0")/../.."
host_only=0
if [ "${1:-}" = "--host" ]; then
  host_only=1
  shift
  [ $# -eq 0 ] || { echo "compile_check: --host checks every host source; name no files with it" >&2; exit 2; }
fi
version=${KILN_CUDA_CHECK_VERSION:-13.0}
root=${KILN_CACHE:-$HOME/.cache/kiln}/cuda-$version
cuda=$root/nvidia/cu${version%%.*}
mkdir -p "$(dirname "$root")"
# One fetch at a time: the unit tier runs this under Node 20 and Node 24.
exec 9> "$root.lock"
flock 9
if [ ! -x "$cuda/nvvm/bin/cicc" ] || [ ! -f "$cuda/include/cublasLt.h" ]; then
  echo "compile_check: fetching CUDA $version (nvcc, nvvm, runtime, crt, cccl, cuBLAS and profiler headers)"
  rm -rf "$root"
  mkdir -p "$root/wheels"
  python3 -m pip download -q --no-deps -d "$root/wheels" "nvidia-cuda-nvcc==$version.*" "nvidia-nvvm==$version.*" \
    "nvidia-cuda-runtime==$version.*" "nvidia-cuda-crt==$version.*" "nvidia-cuda-cccl==$version.*" \
    "nvidia-cuda-profiler-api==$version.*" "nvidia-cublas==$version.*"
  for wheel in "$root"/wheels/*.whl; do
    case $wheel in
      *nvidia_cublas-*) unzip -q -o "$wheel" "nvidia/cu${version%%.*}/include/*" -d "$root" ;;  # headers only: the wheel is 400 MB of libraries
      *) unzip -q -o "$wheel" -d "$root" ;;
    esac
  done
  rm -rf "$root/wheels"
fi
flock -u 9
nvcc=$cuda/bin/nvcc
"$nvcc" --version | tail -1
log=${OUT:-/tmp/kiln-compile-check}
mkdir -p "$log"
failed=0
check() {
  local what=$1
  shift
  if "$@" > "$log/$(basename "$what").log" 2>&1; then
    echo "ok     $what"
  else
    echo "FAILED $what"
    head -20 "$log/$(basename "$what").log"
    failed=1
  fi
}
includes=(-I native/src -I native/tests -I "$cuda/include")
read -r -a defines <<< "${KILN_CUDA_CHECK_DEFINES:-}"
if [ $# -eq 0 ]; then
  for f in native/src/backend/cuda/*.cpp native/src/runtime/cuda_step_model.cpp native/tools/kiln_native.cpp \
    native/tools/kernel_abi.cpp native/tests/cuda/*.cpp; do
    check "$f" g++ -std=c++20 -fsyntax-only -Wall -Wextra -DKILN_CUDA=1 ${defines[@]+"${defines[@]}"} "${includes[@]}" "$f"
  done
  [ "$host_only" = 1 ] || set -- native/src/backend/cuda/*.cu
fi
for f in "$@"; do
  check "$f" "$nvcc" -std=c++20 -O3 -gencode=arch=compute_90a,code=sm_90a --expt-relaxed-constexpr -Xcompiler=-Wall \
    -DKILN_CUDA=1 ${defines[@]+"${defines[@]}"} "${includes[@]}" -Xptxas -v -c "$f" -o /dev/null
  if grep -qi "serializ" "$log/$(basename "$f").log"; then
    echo "       $f: ptxas serializes wgmma:"
    grep -i "serializ" "$log/$(basename "$f").log" | head -3
  fi
done
echo "compile_check: logs in $log"
exit $failed
