import { describe, expect, it } from "vitest";
import { inferenceModelSpecSchema } from "../src/api/inferencemodel.js";
import { applyDefaults, integer, object, optional, string } from "../src/api/schema.js";

describe("schema builder", () => {
  it("lists non-optional properties as required and keeps optional ones out", () => {
    const s = object({ a: string(), b: optional(integer()) });
    expect(s.json).toEqual({
      type: "object",
      required: ["a"],
      properties: { a: { type: "string" }, b: { type: "integer" } },
    });
  });

  it("applies defaults like the API server, including nested defaults under a `default: {}` parent", () => {
    const spec = applyDefaults(inferenceModelSpecSchema, {
      model: { source: "hf://org/m" },
      gpu: { products: ["H100"] },
    });
    expect(spec.engine).toEqual({
      precision: "bf16",
      lmHeadPrecision: "auto",
      maxBatchSize: 16,
      maxInputLen: 2048,
      maxSeqLen: 4096,
      tensorParallel: 1,
      kvCache: { pageSize: 16, dtype: "auto", memoryFraction: 0.9 },
    });
    expect(spec.runtime).toEqual({ replicas: 1, port: 8000, rollout: { maxSurge: 1, maxUnavailable: 0 } });
    expect(spec.gpu.count).toBe(1);
  });

  it("keeps values the user set over defaults", () => {
    const spec = applyDefaults(inferenceModelSpecSchema, {
      model: { source: "hf://org/m" },
      gpu: { products: ["L4"] },
      engine: { precision: "fp16", kvCache: { pageSize: 32 } },
      runtime: { replicas: 0 },
    });
    expect(spec.engine?.precision).toBe("fp16");
    expect(spec.engine?.kvCache?.pageSize).toBe(32);
    expect(spec.runtime?.replicas).toBe(0);
  });
});
