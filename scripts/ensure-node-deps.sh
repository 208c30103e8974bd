#!/usr/bin/env bash
# npm ci only when node_modules is missing or older than the lockfile, so repeated runs stay fast.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=node_modules/.kiln-lock-stamp
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  echo "[kiln] installing node dependencies (npm ci)"
  npm ci --no-audit --no-fund
  cp package-lock.json "$stamp"
fi
