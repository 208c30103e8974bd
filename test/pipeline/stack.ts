import { spawn } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { mkdir, readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import type { KubeConfig } from "@kubernetes/client-node";
import { parseAllDocuments, stringify } from "yaml";
import {
  isConflict,
  KubeClient,
  type KubeObject,
  type ResourceType,
  resourcePath,
} from "../../operator/src/controller/kube.js";
import type { S3Endpoint } from "../cluster/launcher.js";
import { freeLoopbackPorts } from "../cluster/ports.js";
import { isAlive, stopProcesses } from "../cluster/processes.js";
import { answers200, waitUntil } from "../cluster/wait.js";
import { startWatchdog } from "../cluster/watchdog.js";
import { repoRoot } from "../pod-runner/images.js";
import { podRunnerLabel } from "../pod-runner/node.js";
import { CONFIG_MAP, SECRET } from "../pod-runner/resources.js";
import { READY_LINE } from "../pod-runner/runner.js";

// The parts that sit on top of the local control plane for the pipeline tier and the demo: the pod
// runner (this machine as a node) and the operator, configured through its live ConfigMap.

export const OPERATOR_NAMESPACE = "kiln-system";
export const CONFIG_MAP_NAME = "kiln-config";
/** Secret (in each model namespace) with the S3 credentials builds and runtimes get by envFrom. */
export const STORE_SECRET = "kiln-store";
export const RUNNER_NODE = "kiln-local-gpu-0";

export interface StackOptions {
  kubeConfig: KubeConfig;
  kubeconfigPath: string;
  s3: S3Endpoint;
  /** Logs, the runner's pod folders and the pvc:// claims folder live here. */
  runDir: string;
  /** Namespaces models are applied in; each gets the store Secret. */
  modelNamespaces: string[];
  toolchainVersion: string;
  /** Prefix under the bucket the engines go to, so runs sharing a server do not share engines. */
  storePrefix: string;
  /** Stop the runner and operator if this process dies without calling stop() (default true). */
  stopWithParent?: boolean;
  timeoutMs?: number;
}

export interface Stack {
  claimsDir: string;
  logDir: string;
  operatorUrl: string;
  processes: { name: string; pid: number; logFile: string }[];
  /** Rewrites the operator's ConfigMap with another toolchain version (a live toolchain bump). */
  setToolchain(version: string): Promise<void>;
  stop(): Promise<void>;
}

/** The operator configuration document; the images are the names the pod runner's table maps. */
export function operatorConfig(
  o: Pick<StackOptions, "s3" | "toolchainVersion" | "storePrefix">,
  version = o.toolchainVersion,
) {
  return stringify({
    toolchain: { version, builderImage: `kiln/builder:${version}`, runtimeImage: `kiln/runtime:${version}` },
    objectStore: {
      uri: `s3://${o.s3.bucket}/${o.storePrefix}`,
      endpoint: o.s3.endpoint,
      region: o.s3.region,
      credentialsSecret: STORE_SECRET,
    },
    // CPU engines have no GPU label to select; they go to the runner's node, the only one that runs them.
    defaults: { gpuNodeSelectors: { cpu: { [podRunnerLabel]: RUNNER_NODE } } },
    limits: { buildRetryBaseSeconds: 2 },
  });
}

async function createOrReplace(
  client: KubeClient,
  rt: typeof SECRET,
  obj: { metadata: { name: string; namespace?: string } },
) {
  try {
    await client.request("POST", resourcePath(rt, obj.metadata.namespace), obj);
  } catch (err) {
    if (!isConflict(err)) throw err;
    await client.request("PUT", resourcePath(rt, obj.metadata.namespace, obj.metadata.name), obj);
  }
}

const CRD: ResourceType = {
  apiVersion: "apiextensions.k8s.io/v1",
  kind: "CustomResourceDefinition",
  plural: "customresourcedefinitions",
  namespaced: false,
};

/** Applies the committed crds/*.yaml (what users install) and waits until the API serves them. */
export async function installCrds(client: KubeClient, timeoutMs: number): Promise<void> {
  const dir = join(repoRoot, "crds");
  for (const file of (await readdir(dir)).filter((f) => f.endsWith(".yaml"))) {
    for (const doc of parseAllDocuments(await readFile(join(dir, file), "utf8"))) {
      const crd = doc.toJSON() as KubeObject;
      await client.apply(CRD, crd);
      await waitUntil(
        `CRD ${crd.metadata?.name} Established`,
        async () => {
          const live = await client.get<
            KubeObject & { status?: { conditions?: { type: string; status: string }[] } }
          >(CRD, undefined, crd.metadata?.name ?? "");
          return (
            live?.status?.conditions?.some((c) => c.type === "Established" && c.status === "True") ?? false
          );
        },
        { timeoutMs, intervalMs: 100 },
      );
    }
  }
}

async function ensureNamespace(client: KubeClient, name: string) {
  try {
    await client.request("POST", "/api/v1/namespaces", { metadata: { name } });
  } catch (err) {
    if (!isConflict(err)) throw err;
  }
}

function startChild(name: string, args: string[], env: NodeJS.ProcessEnv, logDir: string) {
  const logFile = join(logDir, `${name}.log`);
  const fd = openSync(logFile, "a");
  try {
    // Own process group, so stopping it stops whatever it forked; unref'd, stopped explicitly by pid.
    const child = spawn(process.execPath, ["--import", "tsx", ...args], {
      cwd: repoRoot,
      env,
      detached: true,
      stdio: ["ignore", fd, fd],
    });
    if (child.pid === undefined) throw new Error(`${name} did not start; see ${logFile}`);
    const exited = new Promise<string>((resolve) =>
      child.once("exit", (code, signal) =>
        resolve(`${name} exited (${signal ?? `code ${code}`}); see ${logFile}`),
      ),
    );
    child.unref();
    return { name, pid: child.pid, logFile, exited };
  } finally {
    closeSync(fd);
  }
}

/** Starts the pod runner and the operator against a running control plane; resolves once both serve. */
export async function startStack(o: StackOptions): Promise<Stack> {
  const timeoutMs = o.timeoutMs ?? 90_000;
  const client = new KubeClient(o.kubeConfig);
  const logDir = join(o.runDir, "logs");
  const claimsDir = join(o.runDir, "claims");
  await mkdir(logDir, { recursive: true });
  await mkdir(claimsDir, { recursive: true });

  await installCrds(client, timeoutMs);
  await ensureNamespace(client, OPERATOR_NAMESPACE);
  const writeConfig = (version: string) =>
    createOrReplace(client, CONFIG_MAP, {
      metadata: { name: CONFIG_MAP_NAME, namespace: OPERATOR_NAMESPACE },
      data: { "config.yaml": operatorConfig(o, version) },
    } as never);
  await writeConfig(o.toolchainVersion);
  for (const ns of o.modelNamespaces) {
    await ensureNamespace(client, ns);
    await createOrReplace(client, SECRET, {
      metadata: { name: STORE_SECRET, namespace: ns },
      stringData: { AWS_ACCESS_KEY_ID: o.s3.accessKeyId, AWS_SECRET_ACCESS_KEY: o.s3.secretAccessKey },
    } as never);
  }

  const watchdog = o.stopWithParent === false ? undefined : startWatchdog(o.runDir);
  const started: ReturnType<typeof startChild>[] = [];
  const stop = async () => {
    // The operator first (it would react to the runner's pods vanishing), then the runner, which
    // stops its containers and removes its node.
    await stopProcesses(
      [...started].reverse().map((p) => p.pid),
      15_000,
    );
    if (watchdog && isAlive(watchdog.pid)) await stopProcesses([watchdog.pid], 1_000);
  };
  const baseEnv = {
    PATH: process.env.PATH ?? "",
    HOME: process.env.HOME ?? "",
    LOG_LEVEL: process.env.LOG_LEVEL ?? "info",
  };
  try {
    const runner = startChild(
      "pod-runner",
      [
        "test/pod-runner/main.ts",
        "--kubeconfig",
        o.kubeconfigPath,
        "--run-dir",
        join(o.runDir, "runner"),
        "--claims-dir",
        claimsDir,
        "--node-name",
        RUNNER_NODE,
      ],
      baseEnv,
      logDir,
    );
    started.push(runner);
    watchdog?.track(started.map((p) => p.pid));
    await waitUntil(
      `pod runner ready (${runner.logFile})`,
      async () => (await readFile(runner.logFile, "utf8")).includes(READY_LINE),
      { timeoutMs, abort: runner.exited, intervalMs: 200 },
    );

    const [httpPort] = await freeLoopbackPorts(1);
    const operator = startChild(
      "operator",
      ["operator/src/main.ts"],
      {
        ...baseEnv,
        KUBECONFIG: o.kubeconfigPath,
        KILN_CONFIG_MAP: `${OPERATOR_NAMESPACE}/${CONFIG_MAP_NAME}`,
        KILN_HTTP_PORT: String(httpPort),
        // The operator reads manifests from the store with its own credentials.
        AWS_ACCESS_KEY_ID: o.s3.accessKeyId,
        AWS_SECRET_ACCESS_KEY: o.s3.secretAccessKey,
      },
      logDir,
    );
    started.push(operator);
    watchdog?.track(started.map((p) => p.pid));
    const operatorUrl = `http://127.0.0.1:${httpPort}`;
    await waitUntil(
      `operator ready at ${operatorUrl}/readyz (${operator.logFile})`,
      answers200(`${operatorUrl}/readyz`),
      {
        timeoutMs,
        abort: operator.exited,
        intervalMs: 200,
      },
    );
    return {
      claimsDir,
      logDir,
      operatorUrl,
      processes: started.map(({ name, pid, logFile }) => ({ name, pid, logFile })),
      setToolchain: writeConfig,
      stop,
    };
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
}
