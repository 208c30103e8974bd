#!/usr/bin/env bash
# CPU decode benchmark: Kiln vs transformers on one random Llama checkpoint, in one run on this
# machine. Prints one table and rewrites the "CPU decode" section of bench/RESULTS.md.
# Usage: bench/cpu/run.sh [--threads N] [--prompt-len N] [--steps N] [--precisions fp32,bf16,...]
set -euo pipefail
cd "$(dirname "$0")/../.."
cache="${KILN_CACHE:-$HOME/.cache/kiln}"
bash test/parity/setup                      # the pinned torch + transformers venv
[[ -x native/build/kiln-native ]] || bash native/build.sh
exec "$(cat test/parity/.python)" bench/cpu/bench.py --work "$cache/bench-cpu" "$@"
