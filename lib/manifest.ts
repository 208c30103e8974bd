// The storage contract between the builder (writes) and the operator/runtime (read):
//   <store>/engines/<key>/engine.kiln     the engine file
//   <store>/engines/<key>/manifest.json   written last: an engine exists only when this does
// plus the build Job's termination message and environment.

export const MANIFEST_VERSION = 1;

export interface EngineManifest {
  manifestVersion: number;
  key: string;
  /** sha256 of engine.kiln, hex. */
  sha256: string;
  sizeBytes: number;
  toolchain: { version: string };
  target: { product: string; arch: string; fingerprint?: string };
  /** The EngineBuild spec the engine was built from (its key inputs). */
  inputs: Record<string, unknown>;
  /** What the builder fetched: the pinned revision and the sha256 of every file it read. */
  source?: { uri: string; revision: string; files: { path: string; sizeBytes: number; sha256: string }[] };
  tuning?: Record<string, unknown>;
  /** What the engine did on the build's device right after it was built. */
  benchmark?: EngineBenchmark;
  builtAt: string;
}

/** Latency and throughput at one batch size; means over the requests of the run. */
export interface BenchmarkPoint {
  batchSize: number;
  /** Submit to first generated token. */
  ttftMs: number;
  /** Between generated tokens after the first. */
  tpotMs: number;
  /** Generated tokens of all requests over the run's wall time. */
  tokensPerSecond: number;
}

/** A short benchmark the builder runs on the target device after compiling (a few seconds). */
export interface EngineBenchmark {
  /** The device's fingerprint, as engines record it. */
  device: string;
  promptTokens: number;
  outputTokens: number;
  batch1: BenchmarkPoint;
  maxBatch: BenchmarkPoint;
}

function benchmarkErrors(value: unknown): string[] {
  if (typeof value !== "object" || value === null) return ["manifest.benchmark must be an object"];
  const b = value as Record<string, unknown>;
  const errors: string[] = [];
  const positive = (v: unknown) => typeof v === "number" && Number.isFinite(v) && v > 0;
  if (typeof b.device !== "string" || b.device === "")
    errors.push("manifest.benchmark.device must be a string");
  for (const f of ["promptTokens", "outputTokens"] as const) {
    if (!positive(b[f])) errors.push(`manifest.benchmark.${f} must be positive`);
  }
  for (const point of ["batch1", "maxBatch"] as const) {
    const p = b[point] as Record<string, unknown> | undefined;
    for (const f of ["batchSize", "ttftMs", "tpotMs", "tokensPerSecond"] as const) {
      if (!positive(p?.[f])) errors.push(`manifest.benchmark.${point}.${f} must be positive`);
    }
  }
  return errors;
}

/** What the builder writes to its termination message (/dev/termination-log) on success. */
export interface BuildResult {
  uri: string;
  sha256: string;
  sizeBytes: number;
  tuning?: Record<string, unknown>;
}

/**
 * Exit codes of the builder. PERMANENT means retrying cannot help (a bad spec, an unsupported or
 * broken checkpoint, a wrong target): the build Job's podFailurePolicy fails the Job at once and the
 * operator does not start another attempt. Anything else non-zero is retried with backoff.
 */
export const BUILD_EXIT = {
  ok: 0,
  permanent: 2,
  retryable: 75,
} as const;

/** The Job condition reason Kubernetes sets when a podFailurePolicy rule failed the Job. */
export const PERMANENT_FAILURE_REASON = "PodFailurePolicy";

/** The calibration set shipped in the builder image (builder-image/calibration/<name>.txt). */
export const DEFAULT_CALIBRATION_DATASET = "builtin:kiln-default";

/** Environment the build Job's container receives; the builder reads exactly these. */
export const BUILD_ENV = {
  key: "KILN_ENGINE_KEY",
  spec: "KILN_BUILD_SPEC",
  storeUri: "KILN_STORE_URI",
  storeEndpoint: "KILN_STORE_ENDPOINT",
  storeRegion: "KILN_STORE_REGION",
} as const;

/**
 * Where the build Job mounts each PersistentVolumeClaim a pvc://<claim>/<path> input names (the
 * model source, a calibration set): read-only at `<PVC_MOUNT_ROOT>/<claim>`. The builder resolves
 * pvc:// URIs under this root unless KILN_PVC_ROOT moves it (the local pod runner does).
 */
export const PVC_MOUNT_ROOT = "/mnt/kiln/pvc";

/**
 * The model's credentials Secret reaches the build Job by envFrom with this prefix, so its keys
 * (HF_TOKEN, AWS_ACCESS_KEY_ID, ...) cannot shadow the object store's AWS_* credentials: an
 * s3:// checkpoint in another account and the engine store each keep their own.
 */
export const MODEL_CREDENTIALS_PREFIX = "KILN_MODEL_";

/** Environment of the runtime container. */
export const RUNTIME_ENV = {
  engineUri: "KILN_ENGINE_URI",
  engineSha256: "KILN_ENGINE_SHA256",
  engineKey: "KILN_ENGINE_KEY",
  modelName: "KILN_MODEL_NAME",
  port: "PORT",
  kvMemoryFraction: "KILN_KV_MEMORY_FRACTION",
  kvCacheDtype: "KILN_KV_CACHE_DTYPE",
  storeEndpoint: "KILN_STORE_ENDPOINT",
  storeRegion: "KILN_STORE_REGION",
} as const;

export const enginePaths = (key: string) => ({
  engine: `engines/${key}/engine.kiln`,
  manifest: `engines/${key}/manifest.json`,
  // Outside engines/<key>/ on purpose: a failed build leaves its last progress behind, and
  // engines/ holds only what a build published.
  progress: `builds/${key}/progress.json`,
});

/**
 * The build's latest progress, which the builder writes to `builds/<key>/progress.json` (on a phase
 * change and at most every few seconds) and the operator copies into EngineBuild status while the
 * Job runs. Through the object store both already use, the operator needs no pod-log RBAC and no
 * route to the pod.
 */
export interface BuildProgressReport {
  phase: string;
  /** Of the whole build, 0..100. */
  percent: number;
  message: string;
  updatedAt: string;
}

export function parseProgressReport(body: string | undefined): BuildProgressReport | undefined {
  if (!body) return undefined;
  try {
    const r = JSON.parse(body) as Record<string, unknown>;
    const ok =
      typeof r.phase === "string" &&
      typeof r.percent === "number" &&
      r.percent >= 0 &&
      r.percent <= 100 &&
      typeof r.message === "string" &&
      typeof r.updatedAt === "string" &&
      !Number.isNaN(Date.parse(r.updatedAt));
    return ok
      ? {
          phase: r.phase as string,
          percent: Math.round(r.percent as number),
          message: (r.message as string).slice(0, 1024),
          updatedAt: r.updatedAt as string,
        }
      : undefined;
  } catch {
    return undefined;
  }
}

const HEX64 = /^[0-9a-f]{64}$/;

export type Validated<T> = { ok: true; value: T } | { ok: false; errors: string[] };

/** Check a parsed manifest.json; `expectedKey` guards against an engine stored under the wrong key. */
export function validateManifest(value: unknown, expectedKey: string): Validated<EngineManifest> {
  const errors: string[] = [];
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return { ok: false, errors: ["manifest is not a JSON object"] };
  }
  const m = value as Record<string, unknown>;
  const need = (field: string, ok: boolean, what: string) => {
    if (!ok) errors.push(`manifest.${field} ${what}`);
  };
  need("manifestVersion", m.manifestVersion === MANIFEST_VERSION, `must be ${MANIFEST_VERSION}`);
  need("key", m.key === expectedKey, `must be ${expectedKey} (got ${String(m.key)})`);
  need("sha256", typeof m.sha256 === "string" && HEX64.test(m.sha256), "must be 64 hex digits");
  need(
    "sizeBytes",
    typeof m.sizeBytes === "number" && Number.isInteger(m.sizeBytes) && m.sizeBytes > 0,
    "must be a positive integer",
  );
  const toolchain = m.toolchain as Record<string, unknown> | undefined;
  need(
    "toolchain.version",
    typeof toolchain?.version === "string" && toolchain.version !== "",
    "must be a string",
  );
  const target = m.target as Record<string, unknown> | undefined;
  need("target.product", typeof target?.product === "string", "must be a string");
  need("target.arch", typeof target?.arch === "string", "must be a string");
  need("inputs", typeof m.inputs === "object" && m.inputs !== null, "must be an object");
  need(
    "builtAt",
    typeof m.builtAt === "string" && !Number.isNaN(Date.parse(m.builtAt)),
    "must be a date-time",
  );
  if (m.tuning !== undefined)
    need("tuning", typeof m.tuning === "object" && m.tuning !== null, "must be an object");
  if (m.benchmark !== undefined) errors.push(...benchmarkErrors(m.benchmark));
  return errors.length ? { ok: false, errors } : { ok: true, value: m as unknown as EngineManifest };
}

/** Parse a termination message; anything that is not a well-formed result is reported, not thrown. */
export function parseBuildResult(message: string | undefined): Validated<BuildResult> {
  if (!message?.trim()) return { ok: false, errors: ["empty termination message"] };
  let value: unknown;
  try {
    value = JSON.parse(message);
  } catch {
    return { ok: false, errors: [`termination message is not JSON: ${message.slice(0, 200)}`] };
  }
  const r = value as Record<string, unknown>;
  const errors: string[] = [];
  if (typeof r.uri !== "string") errors.push("result.uri must be a string");
  if (typeof r.sha256 !== "string" || !HEX64.test(r.sha256))
    errors.push("result.sha256 must be 64 hex digits");
  if (typeof r.sizeBytes !== "number" || r.sizeBytes <= 0) errors.push("result.sizeBytes must be positive");
  if (r.tuning !== undefined && (typeof r.tuning !== "object" || r.tuning === null)) {
    errors.push("result.tuning must be an object");
  }
  return errors.length ? { ok: false, errors } : { ok: true, value: r as unknown as BuildResult };
}
