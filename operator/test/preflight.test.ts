import { describe, expect, it } from "vitest";
import type { InferenceModelSpec } from "../src/api/inferencemodel.js";
import { preflight } from "../src/inferencemodel/preflight.js";

const llama8b = { parameters: 8e9, layers: 32, kvHeads: 8, headDim: 128 };
const spec = (over: Partial<InferenceModelSpec> = {}): InferenceModelSpec => ({
  model: { source: "hf://meta-llama/Meta-Llama-3-8B", size: llama8b },
  gpu: { products: ["H100"] },
  ...over,
});

describe("pre-flight", () => {
  it("passes a model that fits", () => {
    expect(preflight(spec())).toEqual([]);
  });

  it("names the field when maxInputLen is not below maxSeqLen", () => {
    expect(preflight(spec({ engine: { maxInputLen: 8192, maxSeqLen: 4096 } }))[0]).toMatchObject({
      field: "spec.engine.maxInputLen",
      message: "spec.engine.maxInputLen (8192) must be below maxSeqLen (4096)",
    });
  });

  it("rejects fp8 on a GPU without fp8 tensor cores", () => {
    const problems = preflight(spec({ engine: { precision: "fp8" }, gpu: { products: ["A100-80GB"] } }));
    expect(problems[0]?.message).toMatch(/A100-80GB \(sm_80\) has no fp8 tensor cores/);
  });

  it("says how much memory is missing when the KV cache does not fit", () => {
    const problems = preflight(spec({ engine: { maxBatchSize: 256, maxSeqLen: 32768, maxInputLen: 1024 } }));
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatchObject({ field: "spec.model.size", reason: "DoesNotFit" });
    expect(problems[0]?.message).toMatch(/KV cache for maxBatchSize 256 x maxSeqLen 32768 needs 1099\.5 GB/);
  });

  it("lets tensor parallelism shard what one GPU cannot hold", () => {
    const big = { parameters: 70e9, layers: 80, kvHeads: 8, headDim: 128 };
    expect(preflight(spec({ model: { source: "hf://m/70b", size: big } }))).toHaveLength(1);
    expect(
      preflight(
        spec({
          model: { source: "hf://m/70b", size: big },
          engine: { tensorParallel: 4 },
          gpu: { products: ["H100"], count: 4 },
        }),
      ),
    ).toEqual([]);
  });

  it("rejects more GPUs per pod than the largest node of the product has", () => {
    const problems = preflight(
      spec({ engine: { tensorParallel: 8 }, gpu: { products: ["H100"], count: 8 } }),
      { H100: 4 },
    );
    expect(problems[0]).toMatchObject({ reason: "NotEnoughGPUs" });
  });

  it("skips the memory check without size hints and for the CPU backend", () => {
    expect(
      preflight({ model: { source: "hf://a/b" }, gpu: { products: ["L4"] }, engine: { maxBatchSize: 4096 } }),
    ).toEqual([]);
    expect(preflight(spec({ gpu: { products: ["cpu"] }, engine: { maxBatchSize: 4096 } }))).toEqual([]);
  });
});
