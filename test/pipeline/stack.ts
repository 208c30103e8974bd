import { spawn } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { mkdir, readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import type { KubeConfig } from "@kubernetes/client-node";
import { parseAllDocuments } from "yaml";
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
import { SECRET } from "../pod-runner/resources.js";
import { READY_LINE } from "../pod-runner/runner.js";
import {
  applyChart,
  CHART_NAMES,
  RELEASE_NAMESPACE,
  RUNNER_NODE,
  renderChart,
  STORE_SECRET,
  serviceAccountKubeconfig,
} from "./chart.js";
import { PV, provideClaim, volumeNameFor } from "./claims.js";
import { TINY_MODEL_CLAIM } from "./model.js";

// The parts that sit on top of the local control plane for the pipeline tier and the demo: the pod
// runner (this machine as a node) and the operator, a local process with what the chart installs
// (its ServiceAccount's token, its RBAC, its live configuration ConfigMap; see chart.ts).

export interface StackOptions {
  kubeConfig: KubeConfig;
  kubeconfigPath: string;
  s3: S3Endpoint;
  /** Logs, the runner's pod folders and the pvc:// claims folder live here. */
  runDir: string;
  /** Namespaces models are applied in; each gets the store Secret and the claims folder's `models` claim. */
  modelNamespaces: string[];
  toolchainVersion: string;
  /** Prefix under the bucket the engines go to, so runs sharing a server do not share engines. */
  storePrefix: string;
  /** A directory: the store is file://<dir> on a hostPath volume of it instead of the S3 server. */
  fileStore?: string;
  /** Stop the runner and operator if this process dies without calling stop() (default true). */
  stopWithParent?: boolean;
  timeoutMs?: number;
}

export interface Stack {
  claimsDir: string;
  logDir: string;
  operatorUrl: string;
  processes: { name: string; pid: number; logFile: string }[];
  /** Re-applies the chart with another toolchain version (a live toolchain bump, as `helm upgrade`). */
  setToolchain(version: string): Promise<void>;
  stop(): Promise<void>;
}

async function createOrReplace(client: KubeClient, rt: ResourceType, obj: KubeObject) {
  try {
    await client.request("POST", resourcePath(rt, obj.metadata?.namespace), obj);
  } catch (err) {
    if (!isConflict(err)) throw err;
    await client.request("PUT", resourcePath(rt, obj.metadata?.namespace, obj.metadata?.name), obj);
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
  await ensureNamespace(client, RELEASE_NAMESPACE);
  const installChart = async (toolchainVersion: string) =>
    applyChart(client, await renderChart({ ...o, toolchainVersion }, o.runDir));
  await installChart(o.toolchainVersion);
  const operatorKubeconfig = join(o.runDir, "operator.kubeconfig");
  await serviceAccountKubeconfig(client, o.kubeConfig, operatorKubeconfig);
  for (const ns of o.modelNamespaces) {
    await ensureNamespace(client, ns);
    await createOrReplace(client, SECRET, {
      metadata: { name: STORE_SECRET, namespace: ns },
      stringData: { AWS_ACCESS_KEY_ID: o.s3.accessKeyId, AWS_SECRET_ACCESS_KEY: o.s3.secretAccessKey },
    } as KubeObject);
    const modelsDir = join(claimsDir, TINY_MODEL_CLAIM);
    await mkdir(modelsDir, { recursive: true });
    await provideClaim(client, ns, TINY_MODEL_CLAIM, modelsDir, timeoutMs);
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
    // Cluster-scoped, so they would outlive the run's namespaces on a cluster kept up.
    for (const ns of o.modelNamespaces) {
      await client.delete(PV, undefined, volumeNameFor(ns, TINY_MODEL_CLAIM)).catch(() => undefined);
    }
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
        // As in the chart's Deployment: the chart's ServiceAccount, its ConfigMap, a pod name.
        KUBECONFIG: operatorKubeconfig,
        KILN_CONFIG_MAP: `${RELEASE_NAMESPACE}/${CHART_NAMES.configMap}`,
        POD_NAME: "kiln-operator-local",
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
      setToolchain: installChart,
      stop,
    };
  } catch (err) {
    await stop().catch(() => undefined);
    throw err;
  }
}
