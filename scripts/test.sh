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

# A full run (no arguments) also proves the unit tier, the addon included, on Node 24.
if [ "$#" -eq 0 ]; then
  echo "[kiln] unit tier on Node 24 (the images' runtime); then every tier on Node $(node --version)"
  bash scripts/with-node24.sh npx vitest run --project unit --reporter=dot
fi

exec npx vitest run "$@"
