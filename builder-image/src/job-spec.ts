import { BUILD_ENV } from "../../lib/manifest.js";
import { PermanentError } from "./errors.js";

/** What one build Job must produce, read from the environment the operator put in the pod spec. */
export interface BuildJob {
  key: string;
  store: { uri: string; endpoint?: string; region?: string };
  model: { source: string; revision?: string };
  engine: {
    precision: string;
    /** "fp8": the lm_head is quantized too. */
    lmHeadPrecision?: "fp8";
    maxBatchSize: number;
    maxInputLen: number;
    maxSeqLen: number;
    calibration?: { dataset?: string; samples?: number };
  };
  target: { product: string; arch: string };
  toolchainVersion: string;
  /** The spec as the operator sent it, recorded in the manifest as the build's inputs. */
  spec: Record<string, unknown>;
}

type Env = Record<string, string | undefined>;

function field<T>(value: unknown, path: string, check: (v: unknown) => v is T, what: string): T {
  if (!check(value))
    throw new PermanentError(`${BUILD_ENV.spec}: ${path} ${what} (got ${JSON.stringify(value)})`);
  return value;
}
const isString = (v: unknown): v is string => typeof v === "string" && v.length > 0;
const isPositiveInt = (v: unknown): v is number => typeof v === "number" && Number.isInteger(v) && v > 0;
const isObject = (v: unknown): v is Record<string, unknown> =>
  typeof v === "object" && v !== null && !Array.isArray(v);

export function buildJobFromEnv(env: Env): BuildJob {
  const key = env[BUILD_ENV.key];
  if (!key || !/^[0-9a-f]{64}$/.test(key)) {
    throw new PermanentError(
      `${BUILD_ENV.key} must be a 64-hex-digit engine key (got ${JSON.stringify(key)})`,
    );
  }
  const storeUri = env[BUILD_ENV.storeUri];
  if (!storeUri) throw new PermanentError(`${BUILD_ENV.storeUri} is not set: where should the engine go?`);
  const rawSpec = env[BUILD_ENV.spec];
  if (!rawSpec) throw new PermanentError(`${BUILD_ENV.spec} is not set`);
  let spec: unknown;
  try {
    spec = JSON.parse(rawSpec);
  } catch (err) {
    throw new PermanentError(`${BUILD_ENV.spec} is not JSON: ${(err as Error).message}`);
  }
  const s = field(spec, "spec", isObject, "must be an object");
  if (s.key !== key)
    throw new PermanentError(
      `${BUILD_ENV.spec}: spec.key ${String(s.key)} differs from ${BUILD_ENV.key} ${key}`,
    );
  const model = field(s.model, "spec.model", isObject, "must be an object");
  const engine = field(s.engine, "spec.engine", isObject, "must be an object");
  const target = field(s.target, "spec.target", isObject, "must be an object");
  const toolchain = field(s.toolchain, "spec.toolchain", isObject, "must be an object");
  const calibration =
    engine.calibration === undefined
      ? undefined
      : field(engine.calibration, "spec.engine.calibration", isObject, "must be an object");
  return {
    key,
    store: {
      uri: storeUri,
      ...(env[BUILD_ENV.storeEndpoint] ? { endpoint: env[BUILD_ENV.storeEndpoint] } : {}),
      ...(env[BUILD_ENV.storeRegion] ? { region: env[BUILD_ENV.storeRegion] } : {}),
    },
    model: {
      source: field(model.source, "spec.model.source", isString, "must be a string"),
      ...(isString(model.revision) ? { revision: model.revision } : {}),
    },
    engine: {
      precision: field(engine.precision, "spec.engine.precision", isString, "must be a string"),
      ...(engine.lmHeadPrecision === undefined
        ? {}
        : {
            lmHeadPrecision: field(
              engine.lmHeadPrecision,
              "spec.engine.lmHeadPrecision",
              (v): v is "fp8" => v === "fp8",
              'must be "fp8" or absent',
            ),
          }),
      maxBatchSize: field(
        engine.maxBatchSize,
        "spec.engine.maxBatchSize",
        isPositiveInt,
        "must be a positive integer",
      ),
      maxInputLen: field(
        engine.maxInputLen,
        "spec.engine.maxInputLen",
        isPositiveInt,
        "must be a positive integer",
      ),
      maxSeqLen: field(
        engine.maxSeqLen,
        "spec.engine.maxSeqLen",
        isPositiveInt,
        "must be a positive integer",
      ),
      ...(calibration
        ? {
            calibration: {
              ...(isString(calibration.dataset) ? { dataset: calibration.dataset } : {}),
              ...(isPositiveInt(calibration.samples) ? { samples: calibration.samples } : {}),
            },
          }
        : {}),
    },
    target: {
      product: field(target.product, "spec.target.product", isString, "must be a string"),
      arch: field(target.arch, "spec.target.arch", isString, "must be a string"),
    },
    toolchainVersion: field(toolchain.version, "spec.toolchain.version", isString, "must be a string"),
    spec: s,
  };
}
