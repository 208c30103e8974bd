#!/usr/bin/env bash
# Configures and builds native/ into native/build (Release). On a fresh Debian machine it first
# installs the packages the build needs; when they are present and the build is current it only
# costs the up-to-date check.
set -euo pipefail
cd "$(dirname "$0")"

packages=(cmake g++ ninja-build nlohmann-json3-dev libssl-dev libgtest-dev)
if command -v dpkg >/dev/null; then
  missing=()
  for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    echo "[kiln] installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  fi
fi

if [ ! -f build/CMakeCache.txt ]; then
  generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  cmake -S . -B build "${generator[@]}" -DCMAKE_BUILD_TYPE=Release ${KILN_CMAKE_ARGS:-}
fi
cmake --build build -j "${KILN_BUILD_JOBS:-2}"
