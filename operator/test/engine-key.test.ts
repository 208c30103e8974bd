import { describe, expect, it } from "vitest";
import type { InferenceModelSpec } from "../src/api/inferencemodel.js";
import {
  buildSpecFor,
  engineBuildName,
  engineKeyFor,
  type Toolchain,
} from "../src/inferencemodel/engine-key.js";

const toolchain: Toolchain = { version: "0.1.0+cuda12.4", builderImage: "ghcr.io/kiln/builder:0.1.0" };
const base: InferenceModelSpec = {
  model: { source: "hf://TinyLlama/TinyLlama-1.1B-Chat-v1.0" },
  gpu: { products: ["H100"] },
};
const keyOf = (spec: InferenceModelSpec, tc: Toolchain = toolchain, revision = "abc123") =>
  buildSpecFor(spec, spec.gpu.products[0] ?? "H100", revision, tc).key;

describe("engine key", () => {
  it("is a sha256 hex digest", () => {
    expect(keyOf(base)).toMatch(/^[0-9a-f]{64}$/);
  });

  it("does not depend on the order keys were written in", () => {
    const reordered: InferenceModelSpec = {
      gpu: { products: ["H100"] },
      engine: { maxSeqLen: 4096, precision: "bf16" },
      model: { source: "hf://TinyLlama/TinyLlama-1.1B-Chat-v1.0" },
    };
    const ordered: InferenceModelSpec = { ...base, engine: { precision: "bf16", maxSeqLen: 4096 } };
    expect(keyOf(reordered)).toBe(keyOf(ordered));
  });

  it("treats an omitted field and its default as the same engine", () => {
    expect(keyOf({ ...base, engine: { precision: "bf16", kvCache: { pageSize: 16 } } })).toBe(keyOf(base));
  });

  it.each<[string, InferenceModelSpec]>([
    ["source", { ...base, model: { source: "hf://org/other" } }],
    ["precision", { ...base, engine: { precision: "fp16" } }],
    ["maxBatchSize", { ...base, engine: { maxBatchSize: 32 } }],
    ["maxInputLen", { ...base, engine: { maxInputLen: 1024 } }],
    ["maxSeqLen", { ...base, engine: { maxSeqLen: 8192 } }],
    ["kvCache.pageSize", { ...base, engine: { kvCache: { pageSize: 32 } } }],
    ["kvCache.dtype", { ...base, engine: { kvCache: { dtype: "fp8" } } }],
    ["tensorParallel", { ...base, engine: { tensorParallel: 2 }, gpu: { products: ["H100"], count: 2 } }],
    ["target product (same arch)", { ...base, gpu: { products: ["H200"] } }],
    ["target arch", { ...base, gpu: { products: ["A100-80GB"] } }],
  ])("changes when %s changes", (_field, spec) => {
    expect(keyOf(spec)).not.toBe(keyOf(base));
  });

  it("changes with the pinned revision", () => {
    expect(keyOf(base, toolchain, "def456")).not.toBe(keyOf(base));
  });

  it("changes on a toolchain bump", () => {
    expect(keyOf(base, { ...toolchain, version: "0.2.0+cuda12.6" })).not.toBe(keyOf(base));
  });

  it("changes with an fp8 lm_head, and only the non-default value enters the build input", () => {
    const fp8 = { ...base, engine: { precision: "fp8" as const } };
    const fp8Head = { ...base, engine: { precision: "fp8" as const, lmHeadPrecision: "fp8" as const } };
    expect(keyOf(fp8Head)).not.toBe(keyOf(fp8));
    expect(keyOf({ ...base, engine: { precision: "fp8", lmHeadPrecision: "auto" } })).toBe(keyOf(fp8));
    expect(buildSpecFor(fp8Head, "H100", "abc123", toolchain).engine.lmHeadPrecision).toBe("fp8");
    expect(buildSpecFor(fp8, "H100", "abc123", toolchain).engine).not.toHaveProperty("lmHeadPrecision");
  });

  it("changes with calibration for fp8 engines only", () => {
    const fp8 = { ...base, engine: { precision: "fp8" as const } };
    const calibratedFp8 = { ...base, engine: { precision: "fp8" as const, calibration: { samples: 64 } } };
    expect(keyOf(calibratedFp8)).not.toBe(keyOf(fp8));
    expect(keyOf({ ...base, engine: { calibration: { samples: 64 } } })).toBe(keyOf(base));
  });

  it.each<[string, InferenceModelSpec]>([
    ["replicas", { ...base, runtime: { replicas: 5 } }],
    ["runtime resources", { ...base, runtime: { resources: { requests: { cpu: "4" } } } }],
    ["runtime port and rollout", { ...base, runtime: { port: 9000, rollout: { maxSurge: 2 } } }],
    ["KV memory fraction", { ...base, engine: { kvCache: { memoryFraction: 0.5 } } }],
    ["credentials Secret", { ...base, model: { ...base.model, credentialsSecret: "hf-token" } }],
    [
      "model size hints",
      { ...base, model: { ...base.model, size: { parameters: 1, layers: 1, kvHeads: 1, headDim: 1 } } },
    ],
  ])("does not change with %s", (_field, spec) => {
    expect(keyOf(spec)).toBe(keyOf(base));
  });

  it("does not change with the builder image alone (the toolchain version names the compiler)", () => {
    expect(keyOf(base, { ...toolchain, builderImage: "mirror.local/kiln/builder:0.1.0" })).toBe(keyOf(base));
  });

  it("is recomputable from the EngineBuild spec it is stored in", () => {
    const { key, ...input } = buildSpecFor(base, "H100", "abc123", toolchain);
    expect(engineKeyFor(input)).toBe(key);
  });
});

describe("engineBuildName", () => {
  const key = "0123456789abcdef".repeat(4);

  it("is <model>-<key[:10]> from the checkpoint name", () => {
    expect(engineBuildName("hf://TinyLlama/TinyLlama-1.1B-Chat-v1.0", key)).toBe(
      "tinyllama-1-1b-chat-v1-0-0123456789",
    );
  });

  it("truncates the model part to keep a 63-character DNS label", () => {
    const name = engineBuildName(`s3://bucket/${"very-long-model-name-".repeat(6)}/`, key);
    expect(name.length).toBeLessThanOrEqual(63);
    expect(name).toMatch(/^[a-z0-9]([a-z0-9-]*[a-z0-9])?$/);
    expect(name.endsWith("-0123456789")).toBe(true);
  });

  it("falls back to `engine` when the source has no usable name", () => {
    expect(engineBuildName("pvc://claim/___", key)).toBe("engine-0123456789");
  });
});
