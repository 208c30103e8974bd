import { createHash } from "node:crypto";
import { canonicalJson } from "../../../lib/canonical-json.js";
import { DEFAULT_CALIBRATION_DATASET } from "../../../lib/manifest.js";
import { ENGINE_FORMAT_VERSION } from "../api/common.js";
import type { EngineBuildSpec } from "../api/enginebuild.js";
import { GPU_PRODUCTS, type GpuProductName } from "../api/gpu.js";
import { type InferenceModelSpec, inferenceModelSpecSchema } from "../api/inferencemodel.js";
import { applyDefaults } from "../api/schema.js";

/** What the operator's configuration contributes to a build. */
export interface Toolchain {
  version: string;
  builderImage: string;
}

/**
 * The build input of one engine: everything that changes the engine bytes, fully resolved (defaults
 * applied, revision pinned), plus how to build it (builder image, credentials) which does not.
 */
export function buildSpecFor(
  spec: InferenceModelSpec,
  product: GpuProductName,
  revision: string,
  toolchain: Toolchain,
): EngineBuildSpec {
  const resolved = applyDefaults(inferenceModelSpecSchema, spec);
  const engine = resolved.engine ?? {};
  const precision = engine.precision ?? "bf16";
  const kvDtype = engine.kvCache?.dtype ?? "auto";
  // Only a non-default lm_head enters the build input, so every existing engine keeps its key.
  const fp8LmHead = engine.lmHeadPrecision === "fp8";
  // Calibration only shapes the bytes of fp8 engines (static activation/KV scales); for other
  // precisions it is ignored by the builder, so it must not cause a rebuild either.
  const calibrated = precision === "fp8" || kvDtype === "fp8";
  const input: Omit<EngineBuildSpec, "key"> = {
    formatVersion: ENGINE_FORMAT_VERSION,
    model: {
      source: resolved.model.source,
      revision,
      ...(resolved.model.credentialsSecret ? { credentialsSecret: resolved.model.credentialsSecret } : {}),
    },
    engine: {
      precision,
      ...(fp8LmHead ? { lmHeadPrecision: "fp8" as const } : {}),
      maxBatchSize: engine.maxBatchSize ?? 16,
      maxInputLen: engine.maxInputLen ?? 2048,
      maxSeqLen: engine.maxSeqLen ?? 4096,
      tensorParallel: engine.tensorParallel ?? 1,
      kvCache: { pageSize: engine.kvCache?.pageSize ?? 16, dtype: kvDtype },
      ...(calibrated
        ? {
            calibration: {
              dataset: engine.calibration?.dataset ?? DEFAULT_CALIBRATION_DATASET,
              samples: engine.calibration?.samples ?? 512,
            },
          }
        : {}),
    },
    target: { product, arch: GPU_PRODUCTS[product].arch },
    toolchain: { version: toolchain.version, builderImage: toolchain.builderImage },
  };
  return { key: engineKeyFor(input), ...input };
}

/**
 * sha256 over the canonical JSON of the inputs that change engine bytes. The builder image and the
 * credentials Secret are left out: the toolchain *version* names the compiler, and who may read the
 * checkpoint does not change what it contains.
 */
export function engineKeyFor(input: Omit<EngineBuildSpec, "key">): string {
  const hashed = {
    formatVersion: input.formatVersion,
    model: { source: input.model.source, revision: input.model.revision },
    engine: input.engine,
    target: input.target,
    toolchain: input.toolchain.version,
  };
  return createHash("sha256").update(canonicalJson(hashed)).digest("hex");
}

const DNS_LABEL_MAX = 63;
const KEY_CHARS = 10;

/**
 * `<model>-<key[:10]>`, where <model> is the checkpoint's own name (last path segment of the source).
 * Deriving it from the source rather than from the InferenceModel keeps the name a pure function of
 * the key's input, so two models racing to create the build for one key create the *same* object
 * (one wins, the other sees AlreadyExists and adopts it) instead of two.
 */
export function engineBuildName(source: string, key: string): string {
  const segment = source.replace(/\/+$/, "").split("/").pop() ?? "";
  const room = DNS_LABEL_MAX - KEY_CHARS - 1;
  const model =
    segment
      .toLowerCase()
      .replace(/[^a-z0-9-]+/g, "-")
      .replace(/-+/g, "-")
      .replace(/^-+/, "")
      .slice(0, room)
      .replace(/-+$/, "") || "engine";
  return `${model}-${key.slice(0, KEY_CHARS)}`;
}

export function shortKey(key: string): string {
  return key.slice(0, KEY_CHARS);
}
