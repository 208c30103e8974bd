import { describe, expect, test } from "vitest";
import { loadConfig } from "../src/config.js";

const base = { KILN_ENGINE_URI: "s3://engines/e/engine.kiln", KILN_ENGINE_SHA256: "A".repeat(64) };

describe("runtime config from the environment", () => {
  test("defaults fit the pod the operator renders", () => {
    expect(loadConfig(base)).toMatchObject({
      engineUri: base.KILN_ENGINE_URI,
      engineSha256: "a".repeat(64),
      modelName: "kiln",
      port: 8000,
      cacheDir: "/var/cache/kiln",
      drainDelaySeconds: 5,
      drainGraceSeconds: 50,
      engine: {},
    });
  });

  test("operator env and tuning knobs are read", () => {
    const config = loadConfig({
      ...base,
      KILN_ENGINE_KEY: "k",
      KILN_MODEL_NAME: "llama",
      PORT: "9000",
      KILN_STORE_ENDPOINT: "http://127.0.0.1:7070",
      KILN_MAX_QUEUED_REQUESTS: "3",
      KILN_KV_CACHE_PAGES: "512",
      KILN_KV_CACHE_DTYPE: "bf16",
      KILN_KV_CACHE_BYTES: "1048576",
      KILN_KV_MEMORY_FRACTION: "0.85",
      KILN_MAX_NUM_BATCHED_TOKENS: "1024",
    });
    expect(config).toMatchObject({
      engineKey: "k",
      modelName: "llama",
      port: 9000,
      store: { endpoint: "http://127.0.0.1:7070" },
      maxQueuedRequests: 3,
      engine: {
        kvCachePages: 512,
        kvCacheDtype: "bf16",
        kvCacheBytes: 1048576,
        kvMemoryFraction: 0.85,
        maxNumBatchedTokens: 1024,
      },
    });
  });

  // Whether the backend has that cache is the native loader's call (fp8: CUDA only), not the config's.
  test.each(["fp32", "bf16", "fp8"])("KILN_KV_CACHE_DTYPE=%s reaches the loader", (dtype) => {
    expect(loadConfig({ ...base, KILN_KV_CACHE_DTYPE: dtype }).engine).toEqual({ kvCacheDtype: dtype });
  });

  test.each([
    [{ KILN_ENGINE_URI: undefined }, /KILN_ENGINE_URI must be set/],
    [{ KILN_ENGINE_URI: "https://x/engine.kiln" }, /KILN_ENGINE_URI must be an s3:\/\/ or file:\/\/ URI/],
    [{ KILN_ENGINE_SHA256: "abc" }, /KILN_ENGINE_SHA256 must be 64 hex digits/],
    [{ PORT: "http" }, /PORT must be an integer >= 0 \(got "http"\)/],
    [{ KILN_MAX_BATCH_SIZE: "0" }, /KILN_MAX_BATCH_SIZE must be an integer >= 1/],
    [{ KILN_KV_CACHE_DTYPE: "fp16" }, /KILN_KV_CACHE_DTYPE must be one of fp32, bf16, fp8 \(got "fp16"\)/],
    [{ KILN_KV_CACHE_DTYPE: "e4m3" }, /KILN_KV_CACHE_DTYPE must be one of fp32, bf16, fp8 \(got "e4m3"\)/],
    [{ KILN_KV_MEMORY_FRACTION: "0" }, /KILN_KV_MEMORY_FRACTION must be a number in \(0, 1\] \(got "0"\)/],
    [{ KILN_KV_MEMORY_FRACTION: "1.5" }, /KILN_KV_MEMORY_FRACTION must be a number in \(0, 1\]/],
    [{ KILN_KV_MEMORY_FRACTION: "NaN" }, /KILN_KV_MEMORY_FRACTION must be a number in \(0, 1\]/],
    [{ KILN_KV_MEMORY_FRACTION: "-0.5" }, /KILN_KV_MEMORY_FRACTION must be a number in \(0, 1\]/],
    [{ KILN_KV_CACHE_BYTES: "0" }, /KILN_KV_CACHE_BYTES must be an integer >= 1/],
  ])("%o is refused naming the variable", (override, message) => {
    expect(() => loadConfig({ ...base, ...override })).toThrow(message);
  });
});
