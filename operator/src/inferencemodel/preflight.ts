import { FP8_PRODUCTS, GPU_PRODUCTS, type GpuProductName } from "../api/gpu.js";
import { type InferenceModelSpec, inferenceModelSpecSchema } from "../api/inferencemodel.js";
import { applyDefaults } from "../api/schema.js";

export interface PreflightProblem {
  field: string;
  reason: "InvalidSpec" | "DoesNotFit" | "NotEnoughGPUs";
  message: string;
}

const BYTES_PER_WEIGHT = { bf16: 2, fp16: 2, fp8: 1, "int8-weight": 1 } as const;
/** Activations, CUDA graphs, cuBLAS workspace: a fixed reserve per GPU. */
export const RUNTIME_RESERVE_BYTES = 2e9;

const gb = (bytes: number) => `${(bytes / 1e9).toFixed(1)} GB`;

/**
 * Checks before any GPU is claimed. The CRD's CEL rules reject most bad specs at admission; these
 * repeat the cross-field ones (objects stored before a CRD upgrade never passed them) and add what
 * CEL cannot know: GPU memory and GPUs per node.
 *
 * `gpusPerNode` is the largest GPU count of any node of each product, where known.
 */
export function preflight(
  rawSpec: InferenceModelSpec,
  gpusPerNode: Partial<Record<GpuProductName, number>> = {},
): PreflightProblem[] {
  const spec = applyDefaults(inferenceModelSpecSchema, rawSpec);
  const problems: PreflightProblem[] = [];
  const engine = spec.engine ?? {};
  const precision = engine.precision ?? "bf16";
  const maxInputLen = engine.maxInputLen ?? 2048;
  const maxSeqLen = engine.maxSeqLen ?? 4096;
  const maxBatchSize = engine.maxBatchSize ?? 16;
  const tp = engine.tensorParallel ?? 1;
  const gpuCount = spec.gpu.count ?? 1;
  const kvDtype = engine.kvCache?.dtype ?? "auto";

  if (maxInputLen >= maxSeqLen) {
    problems.push({
      field: "spec.engine.maxInputLen",
      reason: "InvalidSpec",
      message: `spec.engine.maxInputLen (${maxInputLen}) must be below maxSeqLen (${maxSeqLen})`,
    });
  }
  if (tp > gpuCount) {
    problems.push({
      field: "spec.gpu.count",
      reason: "InvalidSpec",
      message: `spec.gpu.count (${gpuCount}) must be at least engine.tensorParallel (${tp})`,
    });
  }
  for (const product of spec.gpu.products) {
    const fp8 = precision === "fp8" || kvDtype === "fp8";
    if (fp8 && !(FP8_PRODUCTS as readonly string[]).includes(product)) {
      problems.push({
        field: "spec.gpu.products",
        reason: "InvalidSpec",
        message: `${product} (${GPU_PRODUCTS[product].arch}) has no fp8 tensor cores; fp8 needs one of ${FP8_PRODUCTS.join(", ")}`,
      });
    }
    const perNode = gpusPerNode[product];
    if (perNode !== undefined && perNode < gpuCount) {
      problems.push({
        field: "spec.gpu.count",
        reason: "NotEnoughGPUs",
        message: `spec.gpu.count (${gpuCount}) exceeds the ${perNode} GPU(s) of the largest ${product} node`,
      });
    }
  }

  const size = spec.model.size;
  if (size) {
    const weightBytes = (size.parameters * BYTES_PER_WEIGHT[precision]) / tp;
    const kvBytesPerElement = kvDtype === "fp8" ? 1 : 2;
    // K and V, every layer, every KV head, for a full batch of max-length sequences, sharded by TP.
    const kvBytes =
      (2 * size.layers * size.kvHeads * size.headDim * kvBytesPerElement * maxSeqLen * maxBatchSize) / tp;
    const fraction = engine.kvCache?.memoryFraction ?? 0.9;
    for (const product of spec.gpu.products) {
      const memory = GPU_PRODUCTS[product].memoryBytes;
      if (memory === 0) continue;
      const kvRoom = (memory - weightBytes - RUNTIME_RESERVE_BYTES) * fraction;
      if (kvRoom < kvBytes) {
        problems.push({
          field: "spec.model.size",
          reason: "DoesNotFit",
          message:
            `on ${product} (${gb(memory)} per GPU, tensorParallel ${tp}): weights need ${gb(weightBytes)} and the KV cache ` +
            `for maxBatchSize ${maxBatchSize} x maxSeqLen ${maxSeqLen} needs ${gb(kvBytes)}, but only ${gb(Math.max(0, kvRoom))} ` +
            "is left for it; lower the shapes, use a smaller precision, or raise tensorParallel",
        });
      }
    }
  }
  return problems;
}
