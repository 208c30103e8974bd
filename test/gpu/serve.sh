#!/usr/bin/env bash
# The serving runtime on the GPU, end to end through Node: the CUDA build of kiln-native and of the
# addon, a random Llama engine for the cuda target, then serve.py (the greedy tokens of
# `kiln-native generate`) and serve.mjs (the same prompts through the ServingEngine, alone and all at
# once; pages back to 0; KV sizing options).
#
#   bash test/gpu/serve.sh prepare   HERE, before the device call: .gpu/deps (prepare.sh), Node as
#                                    .gpu/node.xz, the Node-API headers and engine.ts bundled into
#                                    .gpu/serve. Carry ".gpu".
#   bash test/gpu/serve.sh [SHAPE..] ON THE GPU MACHINE; shapes: tiny (default), llama3.2-1b.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ "${1:-}" = prepare ]; then
  [ -d .gpu/deps ] || bash test/gpu/prepare.sh  # shared with other device calls: never rebuilt under them
  mkdir -p .gpu/serve/node_modules
  xz -T2 -c "$(command -v node)" > .gpu/node.xz
  cp -r node_modules/node-api-headers node_modules/node-addon-api .gpu/serve/node_modules/
  node_modules/.bin/esbuild native/binding/engine.ts --bundle --platform=node --format=esm \
    --outfile=.gpu/serve/engine.mjs --log-level=warning
  du -sh .gpu
  exit 0
fi

shapes=("$@")
[ ${#shapes[@]} -gt 0 ] || shapes=(tiny)
deps=$PWD/.gpu/deps
export PATH=/usr/local/cuda/bin:$PATH
[ -x /tmp/node ] || { xz -dc .gpu/node.xz > /tmp/node && chmod +x /tmp/node; }

# Only the two targets this needs (no tests: the GPU machine has no GoogleTest), under the git-ignored
# native/build so that a warm machine keeps the build between calls.
args=(-DKILN_CUDA=ON -DCMAKE_BUILD_TYPE=Release -DKILN_BUILD_TESTS=OFF "-DKILN_NODE_MODULES=$PWD/.gpu/serve/node_modules")
[ -f /usr/include/nlohmann/json.hpp ] || args+=("-Dnlohmann_json_DIR=$deps/share/cmake/nlohmann_json")
if [ ! -f /usr/include/openssl/sha.h ]; then
  crypto=$(ls /usr/lib/x86_64-linux-gnu/libcrypto.so.3 2>/dev/null || echo "$deps/lib/libcrypto.so.3")
  args+=("-DOPENSSL_INCLUDE_DIR=$deps/include" "-DOPENSSL_CRYPTO_LIBRARY=$crypto")
  export LD_LIBRARY_PATH=$deps/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
[ -f native/build/cuda/CMakeCache.txt ] || cmake -S native -B native/build/cuda -G Ninja "${args[@]}" >/dev/null
start=$SECONDS
cmake --build native/build/cuda -j "$(nproc)" --target kiln-native kiln_addon
echo "{\"build_s\": $((SECONDS - start))}"

export KILN_ADDON_PATH=$PWD/native/build/cuda/kiln.node
status=0
for shape in "${shapes[@]}"; do
  # A call has a few minutes: a larger shape only when the build and the earlier shapes left time.
  if [ "$shape" != "${shapes[0]}" ] && [ $SECONDS -gt "${KILN_SERVE_SKIP_AFTER_S:-150}" ]; then
    echo "{\"shape\": \"$shape\", \"skipped\": \"${SECONDS}s used\"}"
    continue
  fi
  work=/tmp/kiln-serve-$shape
  rm -rf "$work"
  extra=()
  [ "$shape" = tiny ] || extra=(--no-autotune)  # a 1B autotune takes minutes; the loop is what is tested
  PYTHONUNBUFFERED=1 python3 test/gpu/serve.py --work "$work" --shape "$shape" "${extra[@]}"
  /tmp/node test/gpu/serve.mjs "$work" || status=1
done
exit $status
