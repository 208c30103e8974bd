import {
  calibrationSchema,
  FP8_NEEDS_SM89,
  gpuProductSchema,
  kvDtypeSchema,
  LM_HEAD_FP8_NEEDS_FP8,
  lmHeadPrecisionSchema,
  MAX_INPUT_BELOW_SEQ,
  memoryFractionSchema,
  modelSourceSchema,
  pageSizeSchema,
  precisionSchema,
  revisionSchema,
  shapeFields,
} from "./common.js";
import { conditionsSchema } from "./conditions.js";
import {
  array,
  dateTime,
  enumOf,
  type Infer,
  integer,
  intOrString,
  object,
  opaque,
  optional,
  record,
  string,
} from "./schema.js";

export const INFERENCE_MODEL = {
  kind: "InferenceModel",
  plural: "inferencemodels",
  singular: "inferencemodel",
  shortNames: ["im"],
} as const;

const nameSchema = string({ maxLength: 253 });

export const inferenceModelSpecSchema = object(
  {
    model: object({
      source: modelSourceSchema,
      revision: optional(revisionSchema),
      credentialsSecret: optional(
        string({
          maxLength: 253,
          description:
            "Secret in this namespace with the model's credentials (HF_TOKEN, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for s3://), passed to the build Job by reference.",
        }),
      ),
      size: optional(
        object(
          {
            parameters: integer({ format: "int64", minimum: 1, description: "Parameter count." }),
            layers: integer({ minimum: 1, maximum: 1024 }),
            kvHeads: integer({ minimum: 1, maximum: 1024, description: "Key/value heads (GQA groups)." }),
            headDim: integer({ minimum: 1, maximum: 1024 }),
          },
          {
            description:
              "Model dimensions. When given, pre-flight checks that weights + KV cache fit the GPU before any Job.",
          },
        ),
      ),
    }),
    engine: optional(
      object(
        {
          precision: optional(precisionSchema),
          lmHeadPrecision: optional(lmHeadPrecisionSchema),
          maxBatchSize: optional(shapeFields.maxBatchSize),
          maxInputLen: optional(shapeFields.maxInputLen),
          maxSeqLen: optional(shapeFields.maxSeqLen),
          tensorParallel: optional(shapeFields.tensorParallel),
          kvCache: optional(
            object(
              {
                pageSize: optional(pageSizeSchema),
                dtype: optional(kvDtypeSchema),
                memoryFraction: optional(memoryFractionSchema),
              },
              { default: {} },
            ),
          ),
          calibration: optional(calibrationSchema),
        },
        { default: {}, validations: [MAX_INPUT_BELOW_SEQ, LM_HEAD_FP8_NEEDS_FP8] },
      ),
    ),
    gpu: object({
      products: array(gpuProductSchema, {
        minItems: 1,
        maxItems: 4,
        listType: "set",
        description: "One engine is built per product; each Deployment runs only on nodes of its product.",
      }),
      count: optional(
        integer({
          minimum: 1,
          maximum: 8,
          default: 1,
          description: "GPUs per runtime pod (>= tensorParallel).",
        }),
      ),
    }),
    runtime: optional(
      object(
        {
          replicas: optional(integer({ minimum: 0, maximum: 1000, default: 1 })),
          port: optional(integer({ minimum: 1, maximum: 65535, default: 8000 })),
          resources: optional(
            object({
              requests: optional(record(intOrString())),
              limits: optional(record(intOrString())),
            }),
          ),
          nodeSelector: optional(record(string())),
          tolerations: optional(
            array(opaque<Record<string, unknown>>({ description: "core/v1 Toleration" }), {
              listType: "atomic",
            }),
          ),
          rollout: optional(
            object(
              {
                maxSurge: optional(intOrString({ default: 1 })),
                maxUnavailable: optional(intOrString({ default: 0 })),
              },
              { default: {}, description: "RollingUpdate parameters of the runtime Deployment." },
            ),
          ),
        },
        { default: {} },
      ),
    ),
  },
  {
    validations: [
      {
        rule: `!has(self.engine) || !has(self.engine.precision) || self.engine.precision != 'fp8' || self.gpu.products.all(p, p in ${FP8_NEEDS_SM89.list})`,
        message: `fp8 precision needs fp8 tensor cores: every gpu.products entry must be one of ${FP8_NEEDS_SM89.products.join(", ")}`,
        fieldPath: ".engine.precision",
        reason: "FieldValueInvalid",
      },
      {
        rule: `!has(self.engine) || !has(self.engine.kvCache) || !has(self.engine.kvCache.dtype) || self.engine.kvCache.dtype != 'fp8' || self.gpu.products.all(p, p in ${FP8_NEEDS_SM89.list})`,
        message: `an fp8 KV cache needs every gpu.products entry to be one of ${FP8_NEEDS_SM89.products.join(", ")}`,
        fieldPath: ".engine.kvCache.dtype",
        reason: "FieldValueInvalid",
      },
      {
        rule: "!has(self.engine) || !has(self.engine.tensorParallel) || (has(self.gpu.count) ? self.gpu.count : 1) >= self.engine.tensorParallel",
        message: "gpu.count must be at least engine.tensorParallel (one GPU per shard)",
        fieldPath: ".gpu.count",
        reason: "FieldValueInvalid",
      },
    ],
  },
);

export const engineRefSchema = object({
  key: string({ maxLength: 64 }),
  build: optional(nameSchema),
  uri: optional(string({ maxLength: 2048 })),
  sha256: optional(string({ maxLength: 64 })),
  toolchain: optional(string({ maxLength: 128 })),
  builtAt: optional(dateTime()),
});

export const IM_PHASES = ["Pending", "Building", "Deploying", "Ready", "Degraded", "Failed"] as const;

export const inferenceModelStatusSchema = object({
  phase: optional(enumOf(IM_PHASES)),
  observedGeneration: optional(integer({ format: "int64" })),
  message: optional(string()),
  model: optional(
    object(
      { source: string(), revision: string() },
      { description: "The model revision pinned for this source; every build of the model uses it." },
    ),
  ),
  targets: optional(
    array(
      object({
        product: gpuProductSchema,
        desiredEngine: optional(engineRefSchema),
        servingEngine: optional(engineRefSchema),
        deployment: optional(nameSchema),
        replicas: optional(integer()),
        readyReplicas: optional(integer()),
        message: optional(string({ description: "Why this product has no engine or pods, if so." })),
      }),
      { listType: "map", listMapKeys: ["product"], description: "Per GPU product: its engines and pods." },
    ),
  ),
  engine: optional(string({ description: "Short key(s) of the serving engine(s), for `kubectl get`." })),
  replicas: optional(integer()),
  readyReplicas: optional(integer()),
  ready: optional(string({ description: "readyReplicas/replicas, for `kubectl get`." })),
  endpoint: optional(string()),
  conditions: optional(conditionsSchema),
});

export type InferenceModelSpec = Infer<typeof inferenceModelSpecSchema>;
export type InferenceModelStatus = Infer<typeof inferenceModelStatusSchema>;
export type EngineRef = Infer<typeof engineRefSchema>;
export type InferenceModelPhase = (typeof IM_PHASES)[number];
export type TargetStatus = NonNullable<InferenceModelStatus["targets"]>[number];
