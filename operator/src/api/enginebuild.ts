import {
  calibrationSchema,
  ENGINE_FORMAT_VERSION,
  gpuProductSchema,
  kvDtypeSchema,
  LM_HEAD_FP8_NEEDS_FP8,
  MAX_INPUT_BELOW_SEQ,
  modelSourceSchema,
  pageSizeSchema,
  precisionSchema,
  revisionSchema,
  shapeFields,
} from "./common.js";
import { conditionsSchema } from "./conditions.js";
import { dateTime, enumOf, type Infer, integer, number, object, opaque, optional, string } from "./schema.js";

export const ENGINE_BUILD = {
  kind: "EngineBuild",
  plural: "enginebuilds",
  singular: "enginebuild",
  shortNames: ["eb"],
} as const;

/**
 * The fully resolved build input. Everything here except `toolchain.builderImage` and
 * `model.credentialsSecret` is hashed into `key`; the spec is immutable because a different input
 * is a different engine (and so a different EngineBuild).
 */
export const engineBuildSpecSchema = object(
  {
    key: string({
      pattern: "^[0-9a-f]{64}$",
      description: "Engine key: sha256 of the canonical build input.",
    }),
    formatVersion: integer({ minimum: 1, default: ENGINE_FORMAT_VERSION }),
    model: object({
      source: modelSourceSchema,
      revision: revisionSchema,
      credentialsSecret: optional(string({ maxLength: 253 })),
    }),
    engine: object(
      {
        precision: precisionSchema,
        lmHeadPrecision: optional(
          enumOf(["fp8"] as const, {
            description: "fp8: the lm_head is quantized too. Absent: it keeps the checkpoint's dtype.",
          }),
        ),
        maxBatchSize: shapeFields.maxBatchSize,
        maxInputLen: shapeFields.maxInputLen,
        maxSeqLen: shapeFields.maxSeqLen,
        tensorParallel: shapeFields.tensorParallel,
        kvCache: object({ pageSize: pageSizeSchema, dtype: kvDtypeSchema }),
        calibration: optional(calibrationSchema),
      },
      { validations: [MAX_INPUT_BELOW_SEQ, LM_HEAD_FP8_NEEDS_FP8] },
    ),
    target: object({
      product: gpuProductSchema,
      arch: string({ maxLength: 16, description: "SM arch (sm_90) or cpu." }),
    }),
    toolchain: object({
      version: string({ maxLength: 128 }),
      builderImage: string({ maxLength: 1024 }),
    }),
  },
  {
    validations: [
      {
        rule: "self == oldSelf",
        message: "spec is immutable: a different build input is a different engine key and EngineBuild",
      },
    ],
  },
);

export const EB_PHASES = ["Pending", "Queued", "Running", "Succeeded", "Failed"] as const;

const benchmarkPointSchema = object({
  batchSize: integer({ minimum: 1 }),
  ttftMs: number({ description: "Mean time to first token, ms." }),
  tpotMs: number({ description: "Mean time per output token after the first, ms." }),
  tokensPerSecond: number({ description: "Generated tokens per second over the run." }),
});

export const engineBuildStatusSchema = object({
  phase: optional(enumOf(EB_PHASES)),
  observedGeneration: optional(integer({ format: "int64" })),
  message: optional(string()),
  attempts: optional(integer({ minimum: 0, description: "Build Jobs started for this key." })),
  queuePosition: optional(integer({ minimum: 1, description: "While Queued: place in the build queue." })),
  jobName: optional(string({ maxLength: 253 })),
  cacheHit: optional(
    enumOf(["true", "false"], { description: "Whether the engine already existed in object storage." }),
  ),
  startedAt: optional(dateTime()),
  completedAt: optional(dateTime()),
  nextAttemptAt: optional(dateTime()),
  artifact: optional(
    object({
      uri: string({ maxLength: 2048 }),
      sha256: string({ pattern: "^[0-9a-f]{64}$" }),
      sizeBytes: integer({ format: "int64", minimum: 0 }),
    }),
  ),
  tuning: optional(
    opaque<Record<string, unknown>>({ description: "Summary of the kernels/tactics the autotuner chose." }),
  ),
  benchmark: optional(
    object(
      {
        device: string({ maxLength: 256 }),
        promptTokens: integer({ minimum: 1 }),
        outputTokens: integer({ minimum: 1 }),
        batch1: benchmarkPointSchema,
        maxBatch: benchmarkPointSchema,
      },
      {
        description:
          "The builder's post-build benchmark on the target device: TTFT, TPOT and tok/s at batch 1 and at max batch.",
      },
    ),
  ),
  progress: optional(
    object(
      {
        phase: string({ maxLength: 64 }),
        percent: integer({ minimum: 0, maximum: 100 }),
        message: string({ maxLength: 1024 }),
        updatedAt: dateTime(),
      },
      { description: "The builder's latest progress report, refreshed about every 10 s while the Job runs." },
    ),
  ),
  conditions: optional(conditionsSchema),
});

export type EngineBuildSpec = Infer<typeof engineBuildSpecSchema>;
export type EngineBuildStatus = Infer<typeof engineBuildStatusSchema>;
export type EngineBuildPhase = (typeof EB_PHASES)[number];
