#!/usr/bin/env bash
# Runs every test tier. On a fresh machine it first installs what the tiers need; slow builds are
# cached under ${KILN_CACHE:-~/.cache/kiln} so later runs start in seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/ensure-node-deps.sh
bash test/cluster/build
bash native/build.sh
bash test/parity/setup

echo "[kiln] typecheck and lint"
npx tsc --noEmit -p tsconfig.json
npx biome check .

exec npx vitest run "$@"
