#!/usr/bin/env bash
# The README's first command. On a fresh machine it installs what it needs (node modules, the
# control-plane binaries, the native addon; all cached, so later runs start in seconds), then
# scripts/demo.ts brings up the local control plane, S3 server, pod runner and operator, applies
# examples/tiny-llama.yaml, shows progress until it is Ready, prints a chat completion and leaves
# everything running, printing how to reach it and how to stop it.
#   bash scripts/demo.sh          run it and leave it all up
#   bash scripts/demo.sh --down   stop what it left running
#   bash scripts/demo.sh --stop   run it and stop everything at the end (CI, a quick look)
set -euo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
  "" | --stop) ;;
  --down) exec npx --no-install tsx scripts/demo.ts --down ;;
  *)
    echo "usage: bash scripts/demo.sh [--stop | --down]" >&2
    exit 2
    ;;
esac

fail() {
  echo "demo: $1 failed; see the output above" >&2
  exit 1
}
echo "[kiln demo] installing what is missing (cached under ${KILN_CACHE:-~/.cache/kiln})"
bash scripts/ensure-node-deps.sh || fail "installing node dependencies (scripts/ensure-node-deps.sh)"
bash test/cluster/build || fail "building the control-plane binaries (test/cluster/build)"
bash native/build.sh || fail "building the native compiler and addon (native/build.sh)"

exec npx --no-install tsx scripts/demo.ts "$@"
