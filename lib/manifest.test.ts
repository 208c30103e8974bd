import { mkdtemp } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { enginePaths, parseBuildResult, validateManifest } from "./manifest.js";
import { openObjectStore } from "./object-store.js";

const key = "c".repeat(64);
const manifest = {
  manifestVersion: 1,
  key,
  sha256: "d".repeat(64),
  sizeBytes: 10,
  toolchain: { version: "0.1.0" },
  target: { product: "H100", arch: "sm_90" },
  inputs: {},
  builtAt: "2025-01-01T00:00:00Z",
};

describe("engine manifest", () => {
  it("accepts a complete manifest for its key", () => {
    expect(validateManifest(manifest, key).ok).toBe(true);
  });

  it("checks a benchmark's figures when there is one", () => {
    const point = { batchSize: 1, ttftMs: 5, tpotMs: 2, tokensPerSecond: 100 };
    const benchmark = { device: "cpu:x", promptTokens: 32, outputTokens: 16, batch1: point, maxBatch: point };
    expect(validateManifest({ ...manifest, benchmark }, key).ok).toBe(true);
    const broken = validateManifest(
      { ...manifest, benchmark: { ...benchmark, maxBatch: { ...point, tokensPerSecond: Number.NaN } } },
      key,
    );
    expect(!broken.ok && broken.errors).toEqual([
      "manifest.benchmark.maxBatch.tokensPerSecond must be positive",
    ]);
  });

  it("lists every problem, including a manifest stored under another key", () => {
    const v = validateManifest({ ...manifest, key: "e".repeat(64), sizeBytes: 0, sha256: "xyz" }, key);
    expect(v.ok).toBe(false);
    expect(!v.ok && v.errors).toEqual([
      `manifest.key must be ${key} (got ${"e".repeat(64)})`,
      "manifest.sha256 must be 64 hex digits",
      "manifest.sizeBytes must be a positive integer",
    ]);
  });

  it("parses a build result termination message and reports a malformed one", () => {
    expect(
      parseBuildResult(JSON.stringify({ uri: "s3://b/k", sha256: "d".repeat(64), sizeBytes: 3 })).ok,
    ).toBe(true);
    const bad = parseBuildResult("Error: CUDA out of memory");
    expect(!bad.ok && bad.errors[0]).toMatch(/not JSON: Error: CUDA out of memory/);
  });
});

describe("file:// object store", () => {
  it("round-trips a manifest under engines/<key>/ and answers undefined for a missing one", async () => {
    const dir = await mkdtemp(join(tmpdir(), "kiln-store-"));
    const store = openObjectStore({ uri: `file://${dir}` });
    const paths = enginePaths(key);
    expect(await store.get(paths.manifest)).toBeUndefined();
    await store.put(paths.manifest, JSON.stringify(manifest));
    expect(JSON.parse((await store.get(paths.manifest))?.toString() ?? "")).toEqual(manifest);
    expect(store.uri(paths.engine)).toBe(`file://${dir}/engines/${key}/engine.kiln`);
  });

  it("refuses other schemes with the URI in the message", () => {
    expect(() => openObjectStore({ uri: "gs://bucket" })).toThrow(
      /gs:\/\/bucket: scheme must be s3:\/\/ or file:\/\//,
    );
  });
});
