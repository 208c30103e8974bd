import { writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import type { EngineBuild, InferenceModel } from "../src/api/types.js";
import { buildSpecFor } from "../src/inferencemodel/engine-key.js";
import { EB_RESOURCE } from "../src/inferencemodel/reconcile.js";
import {
  client,
  createNamespace,
  deleteNamespace,
  inferenceModel,
  installCrds,
  kubectl,
} from "./cluster-harness.js";

// The API server itself (the generated openAPIV3Schema and CEL rules) rejects bad specs at
// `kubectl apply`, before any operator sees them; no operator runs in this file.

let ns: string;
beforeAll(async () => {
  await installCrds();
  ns = await createNamespace("admission");
});
afterAll(async () => {
  if (ns) await deleteNamespace(ns);
});

/** `kubectl apply` of one object; resolves to kubectl's error output (empty when it was accepted). */
async function apply(obj: object): Promise<string> {
  const file = join(tmpdir(), `${ns}-${Math.random().toString(16).slice(2)}.yaml`);
  await writeFile(file, stringify(obj));
  try {
    await kubectl("apply", "-f", file);
    return "";
  } catch (err) {
    return (err as { stderr?: string }).stderr ?? String(err);
  }
}

const withSpec = (spec: Partial<InferenceModel["spec"]>) => inferenceModel(ns, "bad", spec);

describe("InferenceModel admission", () => {
  it.each([
    [
      "a source scheme other than hf://, s3://, pvc://",
      withSpec({ model: { source: "ftp://mirror/llama" } }),
      'spec.model.source: Invalid value: "string": must start with one of hf://, s3://, pvc:// (got ftp://mirror/llama)',
    ],
    [
      "a pvc:// source whose claim name is not a PersistentVolumeClaim name",
      withSpec({ model: { source: "pvc://Models_01/llama" } }),
      'spec.model.source: Invalid value: "string": pvc:// must be followed by a PersistentVolumeClaim name',
    ],
    [
      "maxInputLen not below maxSeqLen",
      withSpec({ engine: { maxInputLen: 4096, maxSeqLen: 4096 } }),
      'spec.engine.maxInputLen: Invalid value: "object": maxInputLen must be below maxSeqLen (room is needed for at least one generated token)',
    ],
    [
      "maxInputLen not below the defaulted maxSeqLen",
      withSpec({ engine: { maxInputLen: 8192 } }),
      'spec.engine.maxInputLen: Invalid value: "object": maxInputLen must be below maxSeqLen',
    ],
    [
      "an unknown precision",
      withSpec({ engine: { precision: "fp4" as "fp8" } }),
      'spec.engine.precision: Unsupported value: "fp4": supported values: "bf16", "fp16", "fp8", "int8-weight"',
    ],
    [
      "an fp16 KV cache, which no backend keeps",
      withSpec({ engine: { kvCache: { dtype: "fp16" as "fp8" } } }),
      'spec.engine.kvCache.dtype: Unsupported value: "fp16": supported values: "auto", "bf16", "fp8"',
    ],
    [
      "negative replicas",
      withSpec({ runtime: { replicas: -1 } }),
      "spec.runtime.replicas: Invalid value: -1: spec.runtime.replicas in body should be greater than or equal to 0",
    ],
    [
      "fp8 on a GPU without fp8 tensor cores",
      withSpec({ engine: { precision: "fp8" }, gpu: { products: ["A100-80GB"] } }),
      'spec.engine.precision: Invalid value: "object": fp8 precision needs fp8 tensor cores',
    ],
    [
      "an fp8 lm_head on a bf16 engine",
      withSpec({ engine: { lmHeadPrecision: "fp8" } }),
      'spec.engine.lmHeadPrecision: Invalid value: "object": lmHeadPrecision fp8 needs precision fp8',
    ],
    [
      "tensorParallel above the GPUs per pod",
      withSpec({ engine: { tensorParallel: 2 } }),
      'spec.gpu.count: Invalid value: "object": gpu.count must be at least engine.tensorParallel',
    ],
  ])("rejects %s, naming the field", async (_what, model, message) => {
    const stderr = await apply(model);
    expect(stderr).toContain('The InferenceModel "bad" is invalid');
    expect(stderr).toContain(message);
  });

  it("accepts a pvc:// source with a dotted claim name", async () => {
    expect(
      await apply(inferenceModel(ns, "from-claim", { model: { source: "pvc://models.team-a/llama/8b" } })),
    ).toBe("");
  });

  it("accepts an fp8 lm_head on an fp8 engine", async () => {
    expect(
      await apply(inferenceModel(ns, "fp8-head", { engine: { precision: "fp8", lmHeadPrecision: "fp8" } })),
    ).toBe("");
  });

  it("accepts a valid spec and fills the schema defaults in", async () => {
    expect(await apply(inferenceModel(ns, "good"))).toBe("");
    const stored = JSON.parse(await kubectl("get", "im", "good", "-n", ns, "-o", "json")) as InferenceModel;
    expect(stored.spec.engine).toEqual({
      precision: "bf16",
      lmHeadPrecision: "auto",
      maxBatchSize: 16,
      maxInputLen: 2048,
      maxSeqLen: 4096,
      tensorParallel: 1,
      kvCache: { pageSize: 16, dtype: "auto", memoryFraction: 0.9 },
    });
    expect(stored.spec.runtime).toMatchObject({
      replicas: 1,
      port: 8000,
      rollout: { maxSurge: 1, maxUnavailable: 0 },
    });
  });

  it("keeps an EngineBuild's spec immutable", async () => {
    const spec = buildSpecFor(inferenceModel(ns, "x").spec, "H100", "r1", {
      version: "tc",
      builderImage: "b",
    });
    const created = await client.create<EngineBuild>(EB_RESOURCE, {
      apiVersion: "kiln.dev/v1alpha1",
      kind: "EngineBuild",
      metadata: { name: "immutable", namespace: ns },
      spec,
    });
    await expect(
      client.replace(EB_RESOURCE, {
        ...created,
        spec: { ...spec, toolchain: { ...spec.toolchain, version: "tc2" } },
      }),
    ).rejects.toThrow(/spec is immutable/);
  });
});
