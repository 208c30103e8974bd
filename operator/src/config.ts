import { readFileSync } from "node:fs";
import { parse } from "yaml";
import { GPU_PRODUCTS, type GpuProductName } from "./api/gpu.js";

export interface OperatorConfig {
  toolchain: { version: string; builderImage: string; runtimeImage: string };
  objectStore: {
    /** s3://bucket/prefix or file:///dir */
    uri: string;
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
  };
  leaderElection: { namespace: string; name: string; identity: string };
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

/**
 * Configuration from a YAML/JSON file (KILN_CONFIG_FILE, typically a mounted ConfigMap) overlaid by
 * environment variables. Every problem is reported at once, each naming both places it can be set.
 */
export function loadConfig(
  env: Env = process.env,
  readFile: (p: string) => string = (p) => readFileSync(p, "utf8"),
) {
  const problems: string[] = [];
  let file: Record<string, unknown> = {};
  const path = env.KILN_CONFIG_FILE;
  if (path) {
    try {
      file = (parse(readFile(path)) as Record<string, unknown> | null) ?? {};
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
  if (storeUri && !/^(s3:\/\/[^/]+|file:\/\/\/)/.test(storeUri)) {
    problems.push(`objectStore.uri must be s3://bucket[/prefix] or file:///path, got ${storeUri}`);
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

  const config: OperatorConfig = {
    toolchain: {
      version: str("KILN_TOOLCHAIN_VERSION", "toolchain.version"),
      builderImage: str("KILN_BUILDER_IMAGE", "toolchain.builderImage"),
      runtimeImage: str("KILN_RUNTIME_IMAGE", "toolchain.runtimeImage"),
    },
    objectStore: {
      uri: storeUri,
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
      gpuResource: optStr("KILN_GPU_RESOURCE", "defaults.gpuResource") ?? "nvidia.com/gpu",
    },
    leaderElection: {
      namespace: optStr("KILN_NAMESPACE", "leaderElection.namespace") ?? "kiln-system",
      name: optStr("KILN_LEASE_NAME", "leaderElection.name") ?? "kiln-operator",
      identity: env.POD_NAME ?? env.HOSTNAME ?? `kiln-operator-${process.pid}`,
    },
    http: { port: int("KILN_HTTP_PORT", "http.port", 8080, 0, 65535) },
    reconcileConcurrency: int("KILN_RECONCILE_CONCURRENCY", "reconcileConcurrency", 4, 1, 64),
  };
  if (problems.length) throw new ConfigError(problems);
  return config;
}
