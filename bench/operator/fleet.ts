// The simulated fleet and workload of the operator scale benchmark: GPU nodes of mixed products and
// InferenceModels drawn from a small catalogue with skewed popularity, so many models share an
// engine (same key) inside a namespace and many engines are shared through the object store
// across namespaces, as on a real multi-team cluster. Deterministic: a seeded generator.

import type { GpuProductName } from "../../operator/src/api/gpu.js";
import type { InferenceModelSpec } from "../../operator/src/api/inferencemodel.js";
import type { FakeGpuNode } from "../../test/cluster/launcher.js";

const FLEET: { product: string; smArch: string; name: GpuProductName; share: number }[] = [
  { product: "NVIDIA-H100-80GB-HBM3", smArch: "sm_90", name: "H100", share: 0.4 },
  { product: "NVIDIA-A100-SXM4-80GB", smArch: "sm_80", name: "A100-80GB", share: 0.25 },
  { product: "NVIDIA-L40S", smArch: "sm_89", name: "L40S", share: 0.15 },
  { product: "NVIDIA-L4", smArch: "sm_89", name: "L4", share: 0.1 },
  { product: "NVIDIA-H200", smArch: "sm_90", name: "H200", share: 0.1 },
];

export function gpuFleet(count: number): FakeGpuNode[] {
  const nodes: FakeGpuNode[] = [];
  for (const kind of FLEET) {
    const n = Math.max(1, Math.round(count * kind.share));
    for (let i = 0; i < n && nodes.length < count; i++) {
      nodes.push({
        name: `bench-${kind.name.toLowerCase()}-${i}`,
        product: kind.product,
        smArch: kind.smArch,
        gpus: 8,
      });
    }
  }
  return nodes;
}

/** mulberry32: small, seeded, good enough to pick catalogue entries reproducibly. */
function random(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const SOURCES = [
  "hf://meta-llama/Llama-3.2-1B-Instruct",
  "hf://meta-llama/Llama-3.1-8B-Instruct",
  "hf://Qwen/Qwen2.5-7B-Instruct",
  "hf://mistralai/Mistral-7B-Instruct-v0.3",
  "hf://TinyLlama/TinyLlama-1.1B-Chat-v1.0",
  "hf://HuggingFaceTB/SmolLM2-1.7B-Instruct",
];
const SMALL = new Set([0, 4, 5]);

/** One catalogue entry: what a team would paste from a shared examples folder. */
function catalogue(): Partial<InferenceModelSpec>[] {
  const out: Partial<InferenceModelSpec>[] = [];
  SOURCES.forEach((source, i) => {
    const products: GpuProductName[][] = SMALL.has(i)
      ? [["L4"], ["L40S"], ["H100"]]
      : [["H100"], ["A100-80GB"], ["H200"]];
    for (const p of products) {
      out.push({
        model: { source, revision: `rev-${i}` },
        gpu: { products: p },
        engine: { precision: "bf16" },
      } as Partial<InferenceModelSpec>);
    }
    out.push({
      model: { source, revision: `rev-${i}` },
      gpu: { products: ["H100"] },
      engine: { precision: "fp8" },
    } as Partial<InferenceModelSpec>);
  });
  return out;
}

export interface PlannedModel {
  namespace: string;
  name: string;
  spec: Partial<InferenceModelSpec>;
}

/** `models` models over `namespaces` namespaces; catalogue entries picked with a Zipf-like skew. */
export function workload(models: number, namespaces: number, seed = 42): PlannedModel[] {
  const entries = catalogue();
  const rand = random(seed);
  const weights = entries.map((_, i) => 1 / (i + 1));
  const total = weights.reduce((a, b) => a + b, 0);
  const pick = () => {
    let r = rand() * total;
    for (let i = 0; i < entries.length; i++) {
      r -= weights[i] ?? 0;
      if (r <= 0) return i;
    }
    return entries.length - 1;
  };
  const out: PlannedModel[] = [];
  for (let i = 0; i < models; i++) {
    const entry = pick();
    out.push({
      namespace: `team-${String(i % namespaces).padStart(2, "0")}`,
      name: `m-${String(i).padStart(4, "0")}-c${entry}`,
      spec: entries[entry] ?? {},
    });
  }
  return out;
}
