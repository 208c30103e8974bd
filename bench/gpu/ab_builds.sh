#!/usr/bin/env bash
# Run ON THE GPU MACHINE, in one device call: decode step times of two builds of kiln-native on one
# engine, side by side. "head" is the tree as it is, "base" the tree with .gpu/base/ laid over it
# (bench/gpu/ab_prepare.sh <rev>, run where the history is). For kernel changes that no environment
# switch can turn off; the engine is built (and autotuned) by head, both builds build in parallel.
# Arguments go to bench/gpu/bench.py (e.g. --models llama3-8b --precisions fp8 --decode-batches 1,8);
# the build logs and bench.py's files go to $OUT.
# Usage: OUT=DIR bash bench/gpu/ab_builds.sh [bench.py arguments]
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -f .gpu/base/.rev ] || { echo "ab_builds: no .gpu/base (run bench/gpu/ab_prepare.sh <rev> first, carry .gpu)" >&2; exit 2; }
out=${OUT:-/tmp/kiln-gpu-out}
mkdir -p "$out"
base=/tmp/kiln-ab-base
rm -rf "$base"
mkdir -p "$base/.gpu"
tar -cf - --anchored --exclude=native/build --exclude=native/build-cuda \
  --exclude=native/build-cuda-timeline native test | tar -xf - -C "$base"
cp -r .gpu/deps "$base/.gpu/"
(cd .gpu/base && find . -type f ! -path ./.rev ! -path ./.absent -exec cp --parents {} "$base/" \;)
while read -r f; do rm -f "$base/$f"; done < .gpu/base/.absent
echo "ab_builds: base $(cat .gpu/base/.rev) against head"
bash "$base/test/gpu/build_native.sh" kiln-native > "$out/build-base.log" 2>&1 &
builder=$!
bash test/gpu/build_native.sh kiln-native > "$out/build-head.log" 2>&1 || {
  kill "$builder" 2> /dev/null
  tail -20 "$out/build-head.log"
  exit 1
}
wait "$builder" || { tail -20 "$out/build-base.log"; exit 1; }
export LD_LIBRARY_PATH=$PWD/.gpu/deps/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
exec python3 bench/gpu/bench.py --work "${KILN_BENCH_WORK:-/tmp/kiln-bench-gpu}" --no-hf --keep-engines \
  --ab-binary "$base/native/build-cuda/kiln-native" --out "$out" "$@"
