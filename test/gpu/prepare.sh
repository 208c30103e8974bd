#!/usr/bin/env bash
# Run HERE (the CPU dev machine), before a device call: the GPU machine has CUDA, CMake and ninja
# but no nlohmann-json, OpenSSL headers or GoogleTest, and no package registry. This copies them from
# this machine's Debian packages into .gpu/deps (git-ignored; carry it: `carry: [".gpu"]`).
set -euo pipefail
cd "$(dirname "$0")/../.."
deps=.gpu/deps
rm -rf "$deps"
mkdir -p "$deps/include/openssl" "$deps/share/cmake" "$deps/lib"
cp -r /usr/include/nlohmann "$deps/include/"
cp -r /usr/share/cmake/nlohmann_json "$deps/share/cmake/"
cp /usr/include/openssl/*.h "$deps/include/openssl/"
cp /usr/include/x86_64-linux-gnu/openssl/*.h "$deps/include/openssl/"
cp -L /usr/lib/x86_64-linux-gnu/libcrypto.so.3 "$deps/lib/"
cp -r /usr/src/googletest "$deps/googletest"
du -sh "$deps"
