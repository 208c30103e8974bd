import { RUNTIME_ENV } from "../../lib/manifest.js";
import type { EngineLoadOptions } from "../../native/binding/engine-types.js";

/** Everything the serving pod reads from its environment, checked once at start-up. */
export interface RuntimeConfig {
  /** `s3://bucket/.../engines/<key>/engine.kiln` or `file:///.../engine.kiln`. */
  engineUri: string;
  /** Expected sha256 of engine.kiln (hex); the download is refused when it differs. */
  engineSha256: string;
  /** Engine key; when set, the manifest must carry the same key. */
  engineKey?: string;
  /** The model id clients send and /v1/models lists. */
  modelName: string;
  host: string;
  port: number;
  /** Where engines are downloaded to; an emptyDir in the pod keeps the root filesystem read-only. */
  cacheDir: string;
  store: { endpoint?: string; region?: string };
  /** Requests admitted beyond the engine's running batch; the next one gets 429. */
  maxQueuedRequests: number;
  /** Seconds clients are told to wait in Retry-After on 429/503. */
  retryAfterSeconds: number;
  /**
   * How long a pod that was ready keeps admitting after SIGTERM (with /readyz already failing), so
   * the Service's endpoints drop it before it refuses anyone.
   */
  drainDelaySeconds: number;
  /** How long SIGTERM then waits for in-flight requests before exiting anyway. */
  drainGraceSeconds: number;
  /** Passed to the native loader; unset fields take the engine's defaults. */
  engine: Omit<EngineLoadOptions, "maxQueuedRequests">;
  /** Upper bound on `n` per request, so one request cannot take the whole batch. */
  maxChoicesPerRequest: number;
}

export class ConfigError extends Error {
  override readonly name = "ConfigError";
}

type Env = Record<string, string | undefined>;

function required(env: Env, name: string): string {
  const value = env[name]?.trim();
  if (!value) throw new ConfigError(`${name} must be set`);
  return value;
}

function integer(env: Env, name: string, fallback: number | undefined, min: number): number | undefined {
  const raw = env[name]?.trim();
  if (!raw) return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min) {
    throw new ConfigError(`${name} must be an integer >= ${min} (got "${raw}")`);
  }
  return value;
}

function integerWithDefault(env: Env, name: string, fallback: number, min: number): number {
  return integer(env, name, fallback, min) ?? fallback;
}

export function loadConfig(env: Env = process.env): RuntimeConfig {
  const engineUri = required(env, RUNTIME_ENV.engineUri);
  if (!/^(s3|file):\/\//.test(engineUri)) {
    throw new ConfigError(`${RUNTIME_ENV.engineUri} must be an s3:// or file:// URI (got "${engineUri}")`);
  }
  const engineSha256 = required(env, RUNTIME_ENV.engineSha256).toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(engineSha256)) {
    throw new ConfigError(`${RUNTIME_ENV.engineSha256} must be 64 hex digits (got "${engineSha256}")`);
  }
  const engineKey = env[RUNTIME_ENV.engineKey]?.trim() || undefined;
  return {
    engineUri,
    engineSha256,
    ...(engineKey ? { engineKey } : {}),
    modelName: env[RUNTIME_ENV.modelName]?.trim() || "kiln",
    host: env.HOST?.trim() || "0.0.0.0",
    port: integerWithDefault(env, RUNTIME_ENV.port, 8000, 0),
    cacheDir: env.KILN_CACHE_DIR?.trim() || "/var/cache/kiln",
    store: {
      ...(env[RUNTIME_ENV.storeEndpoint] ? { endpoint: env[RUNTIME_ENV.storeEndpoint] } : {}),
      ...(env[RUNTIME_ENV.storeRegion] ? { region: env[RUNTIME_ENV.storeRegion] } : {}),
    },
    maxQueuedRequests: integerWithDefault(env, "KILN_MAX_QUEUED_REQUESTS", 256, 0),
    retryAfterSeconds: integerWithDefault(env, "KILN_RETRY_AFTER_SECONDS", 1, 1),
    // Delay + grace stay below the pod's terminationGracePeriodSeconds (60), so we exit before the
    // kubelet kills us.
    drainDelaySeconds: integerWithDefault(env, "KILN_DRAIN_DELAY_SECONDS", 5, 0),
    drainGraceSeconds: integerWithDefault(env, "KILN_DRAIN_GRACE_SECONDS", 50, 0),
    engine: {
      ...optional("maxBatchSize", integer(env, "KILN_MAX_BATCH_SIZE", undefined, 1)),
      ...optional("maxNumBatchedTokens", integer(env, "KILN_MAX_NUM_BATCHED_TOKENS", undefined, 1)),
      ...optional("kvCachePages", integer(env, "KILN_KV_CACHE_PAGES", undefined, 1)),
      ...optional("kvCacheBytes", integer(env, "KILN_KV_CACHE_BYTES", undefined, 1)),
      ...optional("kvMemoryFraction", memoryFraction(env, RUNTIME_ENV.kvMemoryFraction)),
      ...optional("kvPageSize", integer(env, "KILN_KV_PAGE_SIZE", undefined, 1)),
      ...optional("maxInputLen", integer(env, "KILN_MAX_INPUT_LEN", undefined, 1)),
      ...optional("threads", integer(env, "KILN_THREADS", undefined, 1)),
      ...kvCacheDtype(env),
    },
    maxChoicesPerRequest: integerWithDefault(env, "KILN_MAX_CHOICES", 8, 1),
  };
}

/** A share of memory: a plain decimal in (0, 1]; NaN, 0 and anything above 1 are refused. */
function memoryFraction(env: Env, name: string): number | undefined {
  const raw = env[name]?.trim();
  if (!raw) return undefined;
  const value = /^[0-9]*\.?[0-9]+$/.test(raw) ? Number(raw) : Number.NaN;
  if (!(value > 0 && value <= 1)) throw new ConfigError(`${name} must be a number in (0, 1] (got "${raw}")`);
  return value;
}

function optional<K extends string>(key: K, value: number | undefined): { [P in K]?: number } {
  return (value === undefined ? {} : { [key]: value }) as { [P in K]?: number };
}

type KvCacheDtype = NonNullable<EngineLoadOptions["kvCacheDtype"]>;
const KV_CACHE_DTYPES: readonly KvCacheDtype[] = ["fp32", "bf16", "fp8"];

/** Only the spelling is checked here: which types a backend has is the native loader's call. */
function kvCacheDtype(env: Env): Pick<EngineLoadOptions, "kvCacheDtype"> {
  const name = RUNTIME_ENV.kvCacheDtype;
  const raw = env[name]?.trim();
  if (!raw) return {};
  if (!(KV_CACHE_DTYPES as readonly string[]).includes(raw))
    throw new ConfigError(`${name} must be one of ${KV_CACHE_DTYPES.join(", ")} (got "${raw}")`);
  return { kvCacheDtype: raw as KvCacheDtype };
}
