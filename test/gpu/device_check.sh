#!/usr/bin/env bash
# Run ON THE GPU MACHINE, in one device call: the stages named in STAGES (default: build tests parity
# bench; also kernels, gemv, serve, bench2), each under its own time limit, each stage's full log in
# $OUT/<stage>.log and its last lines on stdout. BENCH_ARGS / PARITY_ARGS go to bench/gpu/run.sh /
# test/gpu/parity.py; stage bench2 runs bench/gpu/run.sh a second time with BENCH2_ARGS (e.g.
# --hf-only for another model).
# Usage: KILN_COMMIT=<sha> STAGES="build tests bench" BENCH_ARGS="--models llama3.2-1b" bash test/gpu/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/kiln-gpu-out}
mkdir -p "$out"
export LD_LIBRARY_PATH=$PWD/.gpu/deps/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
failed=0

stage() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc $rc in $((SECONDS - t0)) s"
  tail -n "${TAIL_LINES:-12}" "$out/$name.log"
  [ "$rc" = 0 ] || failed=1
  return "$rc"
}

for s in ${STAGES:-build tests parity bench}; do
  case $s in
    build) stage build 400 bash test/gpu/build_native.sh kiln-native kiln-cuda-tests || exit 1 ;;
    # then the builds the defaults do not reach at these small shapes: the counter merge, the
    # four-per-SM decode attention with and without its cp.async pipeline, the unstaged deep GEMV,
    # the E4M3 GEMV without its weight ring
    tests) stage tests 300 bash -c 't=native/build-cuda/kiln-cuda-tests; $t --gtest_brief=1 &&
      KILN_CUDA_DECODE_CLUSTER=0 $t --gtest_brief=1 --gtest_filter="CudaDecodeAttention.*" &&
      KILN_DECODE_ATTENTION_FOUR_PER_SM=1 KILN_DECODE_ATTENTION_PIPELINE=0 $t --gtest_brief=1 --gtest_filter="CudaDecodeAttention.*" &&
      KILN_DECODE_ATTENTION_FOUR_PER_SM=1 KILN_DECODE_ATTENTION_PIPELINE=1 $t --gtest_brief=1 --gtest_filter="CudaDecodeAttention.*" &&
      KILN_DECODE_ATTENTION_FOUR_PER_SM=1 KILN_DECODE_ATTENTION_PIPELINE=1 KILN_CUDA_DECODE_CLUSTER=0 $t --gtest_brief=1 --gtest_filter="CudaDecodeAttention.*" &&
      KILN_CUDA_GEMV_DEEP_STAGE=0 $t --gtest_brief=1 --gtest_filter="*CudaFp8Gemv*" &&
      KILN_CUDA_GEMV_RING=0 $t --gtest_brief=1 --gtest_filter="*CudaFp8Gemv*"' ;;
    # every kernel launcher against a PyTorch reference (builds only the small kiln-kernels-abi)
    kernels) stage kernels 400 bash -c 'bash test/gpu/build_native.sh kiln-kernels-abi && python3 test/gpu/kernels_ref.py' ;;
    # kiln-gemv alone on the Llama shapes; GEMV_ARGS e.g. --compare KILN_CUDA_PDL=0,1
    gemv) stage gemv 300 bash -c "bash test/gpu/build_native.sh kiln-kernels-abi && python3 bench/gpu/gemv_bench.py ${GEMV_ARGS:-}" ;;
    parity) stage parity 400 python3 test/gpu/parity.py --work /tmp/kiln-parity ${PARITY_ARGS:-} ;;
    # the serving runtime through Node on the GPU (needs `bash test/gpu/serve.sh prepare` here first)
    serve) stage serve 400 bash test/gpu/serve.sh ${SERVE_SHAPES:-tiny} ;;
    bench) stage bench 590 bash bench/gpu/run.sh --out "$out" ${BENCH_ARGS:-} ;;
    bench2) stage bench2 590 bash bench/gpu/run.sh --out "$out" ${BENCH2_ARGS:-} ;;
    *) echo "unknown stage $s" >&2; exit 2 ;;
  esac
done
exit $failed
