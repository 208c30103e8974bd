import { DEFAULT_CALIBRATION_DATASET } from "../../../lib/manifest.js";
import { FP8_PRODUCTS, GPU_PRODUCT_NAMES } from "./gpu.js";
import { enumOf, integer, number, object, optional, string } from "./schema.js";

export const GROUP = "kiln.dev";
export const VERSION = "v1alpha1";
export const API_VERSION = `${GROUP}/${VERSION}`;

/** Bumped when the engine file layout changes; part of every engine key. */
export const ENGINE_FORMAT_VERSION = 1;

export const SOURCE_SCHEMES = ["hf://", "s3://", "pvc://"] as const;

export const PRECISIONS = ["bf16", "fp16", "fp8", "int8-weight"] as const;
// No fp16: neither backend keeps an fp16 KV cache, so the schema refuses it at apply rather than
// accept a type no runtime pod could honour.
export const KV_DTYPES = ["auto", "bf16", "fp8"] as const;
export const LM_HEAD_PRECISIONS = ["auto", "fp8"] as const;
export const PAGE_SIZES = [8, 16, 32, 64, 128, 256] as const;

const celList = (values: readonly (string | number)[]) =>
  `[${values.map((v) => (typeof v === "string" ? `'${v}'` : String(v))).join(", ")}]`;

export const gpuProductSchema = enumOf(GPU_PRODUCT_NAMES, {
  description: "GPU product the engine is compiled and autotuned for (`cpu` for the CPU backend).",
});

export const modelSourceSchema = string({
  maxLength: 512,
  description:
    "Where the Hugging Face-format checkpoint lives: hf://org/name, s3://bucket/prefix, pvc://claim/path.",
  validations: [
    {
      rule: `${SOURCE_SCHEMES.map((s) => `self.startsWith('${s}')`).join(" || ")}`,
      message: `must start with one of ${SOURCE_SCHEMES.join(", ")}`,
      messageExpression: `'must start with one of ${SOURCE_SCHEMES.join(", ")} (got ' + self + ')'`,
      reason: "FieldValueInvalid",
    },
    {
      rule: "self.matches('^[a-z0-9]+://[^/]+/.+$')",
      message: "must name a location after the scheme, e.g. hf://org/name",
      reason: "FieldValueInvalid",
    },
    {
      // The claim is mounted into the build Job by name: catch a bad one at apply, not at build time.
      rule: "!self.startsWith('pvc://') || self.matches('^pvc://[a-z0-9]([-a-z0-9]{0,251}[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/.+$')",
      message:
        "pvc:// must be followed by a PersistentVolumeClaim name (lowercase letters, digits, '-', '.') and a path, e.g. pvc://models/llama-3-8b",
      reason: "FieldValueInvalid",
    },
  ],
});

export const revisionSchema = string({
  maxLength: 128,
  description: "Commit, tag or ETag of the checkpoint.",
});

export const precisionSchema = enumOf(PRECISIONS, {
  default: "bf16",
  description: "Weight/activation precision. fp8 needs an sm_89+ target and calibrates activation scales.",
});

export const calibrationSchema = object({
  dataset: optional(
    string({ maxLength: 512, default: DEFAULT_CALIBRATION_DATASET, description: "Calibration text set." }),
  ),
  samples: optional(integer({ minimum: 1, maximum: 100000, default: 512 })),
});

/** Shape limits the engine is compiled for; shared by both kinds so the key inputs cannot diverge. */
export const shapeFields = {
  maxBatchSize: integer({
    minimum: 1,
    maximum: 4096,
    default: 16,
    description: "Most sequences decoded in one step.",
  }),
  maxInputLen: integer({
    minimum: 1,
    maximum: 1048576,
    default: 2048,
    description: "Longest prompt, in tokens.",
  }),
  maxSeqLen: integer({
    minimum: 2,
    maximum: 1048576,
    default: 4096,
    description: "Longest prompt + output, in tokens.",
  }),
  tensorParallel: integer({
    minimum: 1,
    maximum: 8,
    default: 1,
    description: "GPUs one engine instance is sharded over.",
    validations: [{ rule: "self in [1, 2, 4, 8]", message: "must be 1, 2, 4 or 8" }],
  }),
};

export const pageSizeSchema = integer({
  minimum: 8,
  maximum: 256,
  default: 16,
  description: "Tokens per KV-cache page.",
  validations: [
    { rule: `self in ${celList(PAGE_SIZES)}`, message: `must be one of ${PAGE_SIZES.join(", ")}` },
  ],
});

export const kvDtypeSchema = enumOf(KV_DTYPES, {
  default: "auto",
  description:
    "KV-cache element type: auto is the backend's default (bf16 on a GPU, fp32 on the CPU); fp8 is E4M3, CUDA only.",
});

export const lmHeadPrecisionSchema = enumOf(LM_HEAD_PRECISIONS, {
  default: "auto",
  description:
    "The lm_head's weight: auto keeps the checkpoint's dtype (as TensorRT-LLM, vLLM and SGLang do by default); fp8 quantizes it to E4M3 too (fp8 precision only), about 5% faster batch-1 decode of an 8B model for a small logit error.",
});

/** An fp8 lm_head takes its input scale from the fp8 calibration. */
export const LM_HEAD_FP8_NEEDS_FP8 = {
  rule: "!has(self.lmHeadPrecision) || self.lmHeadPrecision != 'fp8' || (has(self.precision) && self.precision == 'fp8')",
  message: "lmHeadPrecision fp8 needs precision fp8 (its input scale comes from the fp8 calibration)",
  fieldPath: ".lmHeadPrecision",
  reason: "FieldValueInvalid" as const,
};

export const memoryFractionSchema = number({
  minimum: 0.1,
  maximum: 0.98,
  default: 0.9,
  description: "Share of free device memory the runtime gives the KV cache (runtime-only: not in the key).",
});

export const MAX_INPUT_BELOW_SEQ = {
  rule: "!has(self.maxInputLen) || !has(self.maxSeqLen) || self.maxInputLen < self.maxSeqLen",
  message: "maxInputLen must be below maxSeqLen (room is needed for at least one generated token)",
  // No messageExpression quoting the two values: the API server estimates string(int) as unbounded
  // and rejects the whole CRD for exceeding the CEL cost budget.
  fieldPath: ".maxInputLen",
  reason: "FieldValueInvalid" as const,
};

export const FP8_NEEDS_SM89 = {
  products: FP8_PRODUCTS,
  list: celList(FP8_PRODUCTS),
};
