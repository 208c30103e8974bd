import { readFileSync } from "node:fs";
import { parse } from "yaml";
import { GPU_PRODUCTS, type GpuProductName } from "./api/gpu.js";
import { type BuilderResources, checkBuilderResources } from "./builder-resources.js";
import { checkStoreVolume, type VolumeSource } from "./store-volume.js";

export interface OperatorConfig {
  toolchain: { version: string; builderImage: string; runtimeImage: string };
  objectStore: {
    /** s3://bucket/prefix, or file:///dir on `volume`. */
    uri: string;
    /**
     * For a file:// store only: the Kubernetes volume source (nfs, hostPath, a claim, csi, ...) that
     * holds the directory, mounted at the uri's path in build Jobs and runtime pods.
     */
    volume?: VolumeSource;
    endpoint?: string;
    region: string;
    /** Secret (in each model's namespace) with AWS_* keys, mounted into build Jobs and runtime pods. */
    credentialsSecret?: string;
  };
  limits: {
    /** Build Jobs running at once, cluster-wide; the rest wait as Queued. */
    maxConcurrentBuilds: number;
    /** Jobs (attempts) per EngineBuild before it is Failed. */
    buildAttempts: number;
    /** Pod retries inside one Job. */
    jobBackoffLimit: number;
    buildDeadlineSeconds: number;
    jobTtlSeconds: number;
    /** Delay before a failed build's next attempt; doubles per attempt. */
    buildRetryBaseSeconds: number;
  };
  defaults: {
    /** Node labels runtime and build pods of a product must land on. */
    gpuNodeSelectors: Partial<Record<GpuProductName, Record<string, string>>>;
    gpuResource: string;
    /**
     * Requests and limits (CPU, memory, ...) of every build Job's builder container, beside the GPU
     * limit the operator sets; not part of the engine key. Empty: none.
     */
    builderResources: BuilderResources;
  };
  leaderElection: {
    namespace: string;
    name: string;
    identity: string;
    /** How long a holder's lease lasts without renewal; a successor waits this long after a crash. */
    leaseDurationSeconds: number;
    /** A leader that has not renewed for this long steps down. */
    renewDeadlineSeconds: number;
    retryPeriodSeconds: number;
  };
  http: { port: number };
  reconcileConcurrency: number;
}

export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid operator configuration:\n  - ${problems.join("\n  - ")}`);
    this.name = "ConfigError";
  }
}

type Env = Record<string, string | undefined>;

const defaultSelectors = () =>
  Object.fromEntries(
    Object.entries(GPU_PRODUCTS).flatMap(([name, p]) =>
      "nodeLabel" in p ? [[name, { "nvidia.com/gpu.product": p.nodeLabel }]] : [],
    ),
  ) as OperatorConfig["defaults"]["gpuNodeSelectors"];

/** The YAML document a configuration is read from when it is not a file: a ConfigMap's key. */
export interface ConfigDocument {
  /** Where it came from, for messages, e.g. `ConfigMap kiln-system/kiln-config key config.yaml`. */
  source: string;
  text: string;
}

/** The key of the ConfigMap (KILN_CONFIG_MAP=namespace/name) that holds the configuration. */
export const CONFIG_MAP_KEY = "config.yaml";

/** `namespace/name` of KILN_CONFIG_MAP, if set. */
export function configMapRef(env: Env = process.env): { namespace: string; name: string } | undefined {
  const ref = env.KILN_CONFIG_MAP;
  if (!ref) return undefined;
  const [namespace, name, ...rest] = ref.split("/");
  if (!namespace || !name || rest.length) {
    throw new ConfigError([`KILN_CONFIG_MAP must be namespace/name, got ${JSON.stringify(ref)}`]);
  }
  return { namespace, name };
}

/**
 * Configuration from a YAML document overlaid by environment variables. The document is `document`
 * when given (the operator's ConfigMap, read through the API so that edits apply live), else the
 * file KILN_CONFIG_FILE (e.g. a mounted ConfigMap, read once). Every problem is reported at once,
 * each naming both places it can be set.
 */
export function loadConfig(
  env: Env = process.env,
  readFile: (p: string) => string = (p) => readFileSync(p, "utf8"),
  document?: ConfigDocument,
) {
  const problems: string[] = [];
  let file: Record<string, unknown> = {};
  const path = document?.source ?? env.KILN_CONFIG_FILE;
  if (path) {
    try {
      const parsed: unknown = parse(document ? document.text : readFile(path));
      if (parsed !== null && (typeof parsed !== "object" || Array.isArray(parsed))) {
        problems.push(`${path}: must be a YAML mapping`);
      } else {
        file = (parsed as Record<string, unknown> | null) ?? {};
      }
    } catch (err) {
      problems.push(`${path}: ${(err as Error).message}`);
    }
  }
  const fromFile = (dotted: string): unknown =>
    dotted
      .split(".")
      .reduce<unknown>(
        (o, k) => (o && typeof o === "object" ? (o as Record<string, unknown>)[k] : undefined),
        file,
      );
  const where = (envName: string, dotted: string) =>
    `env ${envName} or ${dotted} in ${path ?? "KILN_CONFIG_FILE"}`;

  const str = (envName: string, dotted: string, fallback?: string): string => {
    const v = env[envName] ?? fromFile(dotted) ?? fallback;
    if (v === undefined || v === "") {
      problems.push(`${dotted} is required (${where(envName, dotted)})`);
      return "";
    }
    if (typeof v !== "string") {
      problems.push(`${dotted} must be a string (${where(envName, dotted)})`);
      return "";
    }
    return v;
  };
  const optStr = (envName: string, dotted: string): string | undefined => {
    const v = env[envName] ?? fromFile(dotted);
    return v === undefined || v === "" ? undefined : String(v);
  };
  // A structured setting; in the environment, as YAML (or JSON) text. Unreadable text is reported
  // here, so `readable` tells callers not to report the setting again as missing.
  const yamlValue = (envName: string, dotted: string): { value: unknown; readable: boolean } => {
    const text = env[envName];
    if (text === undefined || text === "") return { value: fromFile(dotted) ?? undefined, readable: true };
    try {
      return { value: parse(text) ?? undefined, readable: true };
    } catch (err) {
      problems.push(`${dotted}: env ${envName} is not YAML or JSON: ${(err as Error).message}`);
      return { value: undefined, readable: false };
    }
  };
  const int = (envName: string, dotted: string, fallback: number, min: number, max: number): number => {
    const raw = env[envName] ?? fromFile(dotted) ?? fallback;
    const n = typeof raw === "number" ? raw : Number(raw);
    if (!Number.isInteger(n) || n < min || n > max) {
      problems.push(
        `${dotted} must be an integer in [${min}, ${max}], got ${JSON.stringify(raw)} (${where(envName, dotted)})`,
      );
      return fallback;
    }
    return n;
  };

  const storeUri = str("KILN_STORE_URI", "objectStore.uri");
  if (storeUri && !/^(s3:\/\/[^/]+|file:)/.test(storeUri)) {
    problems.push(`objectStore.uri must be s3://bucket[/prefix] or file:///<path>, got ${storeUri}`);
  }
  const { value: storeVolume, readable: storeVolumeReadable } = yamlValue(
    "KILN_STORE_VOLUME",
    "objectStore.volume",
  );
  if (storeUri && storeVolumeReadable) {
    problems.push(
      ...checkStoreVolume(storeUri, storeVolume, {
        uri: where("KILN_STORE_URI", "objectStore.uri"),
        volume: where("KILN_STORE_VOLUME", "objectStore.volume"),
      }),
    );
  }

  const selectors = { ...defaultSelectors() };
  const fileSelectors = fromFile("defaults.gpuNodeSelectors");
  if (fileSelectors !== undefined) {
    if (typeof fileSelectors !== "object" || fileSelectors === null) {
      problems.push("defaults.gpuNodeSelectors must map a GPU product to node labels");
    } else {
      for (const [product, labels] of Object.entries(fileSelectors)) {
        if (!(product in GPU_PRODUCTS)) {
          problems.push(
            `defaults.gpuNodeSelectors.${product}: unknown GPU product (known: ${Object.keys(GPU_PRODUCTS).join(", ")})`,
          );
        } else {
          selectors[product as GpuProductName] = labels as Record<string, string>;
        }
      }
    }
  }

  const gpuResource = optStr("KILN_GPU_RESOURCE", "defaults.gpuResource") ?? "nvidia.com/gpu";
  // Unreadable text is reported by yamlValue and comes back undefined: nothing more to report here.
  const builderResources = checkBuilderResources(
    yamlValue("KILN_BUILDER_RESOURCES", "defaults.builderResources").value,
    gpuResource,
    where("KILN_BUILDER_RESOURCES", "defaults.builderResources"),
  );
  problems.push(...builderResources.problems);

  const config: OperatorConfig = {
    toolchain: {
      version: str("KILN_TOOLCHAIN_VERSION", "toolchain.version"),
      builderImage: str("KILN_BUILDER_IMAGE", "toolchain.builderImage"),
      runtimeImage: str("KILN_RUNTIME_IMAGE", "toolchain.runtimeImage"),
    },
    objectStore: {
      uri: storeUri,
      ...(storeVolume === undefined ? {} : { volume: storeVolume as VolumeSource }),
      endpoint: optStr("KILN_STORE_ENDPOINT", "objectStore.endpoint"),
      region: optStr("KILN_STORE_REGION", "objectStore.region") ?? "us-east-1",
      credentialsSecret: optStr("KILN_STORE_CREDENTIALS_SECRET", "objectStore.credentialsSecret"),
    },
    limits: {
      maxConcurrentBuilds: int("KILN_MAX_CONCURRENT_BUILDS", "limits.maxConcurrentBuilds", 2, 1, 1000),
      buildAttempts: int("KILN_BUILD_ATTEMPTS", "limits.buildAttempts", 3, 1, 100),
      jobBackoffLimit: int("KILN_JOB_BACKOFF_LIMIT", "limits.jobBackoffLimit", 0, 0, 10),
      buildDeadlineSeconds: int(
        "KILN_BUILD_DEADLINE_SECONDS",
        "limits.buildDeadlineSeconds",
        4 * 3600,
        60,
        7 * 86400,
      ),
      jobTtlSeconds: int("KILN_JOB_TTL_SECONDS", "limits.jobTtlSeconds", 86400, 0, 30 * 86400),
      buildRetryBaseSeconds: int(
        "KILN_BUILD_RETRY_BASE_SECONDS",
        "limits.buildRetryBaseSeconds",
        30,
        0,
        86400,
      ),
    },
    defaults: {
      gpuNodeSelectors: selectors,
      gpuResource,
      builderResources: builderResources.resources,
    },
    leaderElection: {
      namespace: optStr("KILN_NAMESPACE", "leaderElection.namespace") ?? "kiln-system",
      name: optStr("KILN_LEASE_NAME", "leaderElection.name") ?? "kiln-operator",
      identity: env.POD_NAME ?? env.HOSTNAME ?? `kiln-operator-${process.pid}`,
      leaseDurationSeconds: int(
        "KILN_LEASE_DURATION_SECONDS",
        "leaderElection.leaseDurationSeconds",
        15,
        2,
        300,
      ),
      renewDeadlineSeconds: int(
        "KILN_LEASE_RENEW_DEADLINE_SECONDS",
        "leaderElection.renewDeadlineSeconds",
        10,
        1,
        300,
      ),
      retryPeriodSeconds: int(
        "KILN_LEASE_RETRY_PERIOD_SECONDS",
        "leaderElection.retryPeriodSeconds",
        2,
        1,
        60,
      ),
    },
    http: { port: int("KILN_HTTP_PORT", "http.port", 8080, 0, 65535) },
    reconcileConcurrency: int("KILN_RECONCILE_CONCURRENCY", "reconcileConcurrency", 4, 1, 64),
  };
  const lease = config.leaderElection;
  if (lease.renewDeadlineSeconds >= lease.leaseDurationSeconds) {
    problems.push(
      `leaderElection.renewDeadlineSeconds (${lease.renewDeadlineSeconds}) must be below leaseDurationSeconds (${lease.leaseDurationSeconds}): a leader must step down before others may take over`,
    );
  }
  if (problems.length) throw new ConfigError(problems);
  return config;
}

/**
 * Take a changed configuration into the running one, in place (every controller holds `current`).
 * Toolchain, limits and defaults apply at once; the rest is wired into clients and listeners at
 * start, so a change there is reported as needing a restart rather than half-applied.
 */
export function applyConfigChange(
  current: OperatorConfig,
  next: OperatorConfig,
): { changed: string[]; needsRestart: string[] } {
  const changed: string[] = [];
  const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
  for (const section of ["toolchain", "limits", "defaults"] as const) {
    if (!same(current[section], next[section])) {
      changed.push(section);
      Object.assign(current[section], next[section]);
    }
  }
  const needsRestart = (["objectStore", "leaderElection", "http", "reconcileConcurrency"] as const).filter(
    (section) => !same(current[section], next[section]),
  );
  return { changed, needsRestart };
}
