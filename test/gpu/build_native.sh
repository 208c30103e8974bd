#!/usr/bin/env bash
# Run ON THE GPU MACHINE: builds native/ with the CUDA backend into native/build-cuda (kiln-native,
# kiln-native-tests, kiln-cuda-tests; or only the targets named as arguments). Packages the machine
# lacks come from .gpu/deps (see prepare.sh). With KILN_CUDA_TIMELINE=1: the timeline build
# (backend/cuda/timeline.h) into native/build-cuda-timeline instead.
set -euo pipefail
cd "$(dirname "$0")/../.."
deps=$PWD/.gpu/deps
export PATH=/usr/local/cuda/bin:$PATH
args=(-DKILN_CUDA=ON -DCMAKE_BUILD_TYPE=Release)
build=native/build-cuda
if [ "${KILN_CUDA_TIMELINE:-0}" = 1 ]; then
  build=native/build-cuda-timeline
  args+=(-DKILN_CUDA_TIMELINE=ON)
fi
[ -f /usr/include/nlohmann/json.hpp ] || args+=("-Dnlohmann_json_DIR=$deps/share/cmake/nlohmann_json")
if [ ! -f /usr/include/openssl/sha.h ]; then
  crypto=$(ls /usr/lib/x86_64-linux-gnu/libcrypto.so.3 2>/dev/null || echo "$deps/lib/libcrypto.so.3")
  args+=("-DOPENSSL_INCLUDE_DIR=$deps/include" "-DOPENSSL_CRYPTO_LIBRARY=$crypto")
  # the copy from .gpu/deps is only found at run time through this path
  export LD_LIBRARY_PATH=$deps/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
[ -d /usr/include/gtest ] || args+=("-DKILN_GTEST_SOURCE=$deps/googletest")
[ -f $build/CMakeCache.txt ] || cmake -S native -B $build -G Ninja "${args[@]}"
cmake --build $build -j "$(nproc)" ${1:+--target "$@"}
