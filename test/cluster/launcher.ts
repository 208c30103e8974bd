import { mkdir, mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CoreV1Api, KubeConfig } from "@kubernetes/client-node";
import {
  type Ports,
  startApiserver,
  startControllerManager,
  startEtcd,
  startKwok,
  startScheduler,
} from "./control-plane.js";
import { createGpuNodes, defaultGpuNodes, type FakeGpuNode } from "./gpu-nodes.js";
import { writeKubeconfig } from "./kubeconfig.js";
import { createClusterPki } from "./pki.js";
import { freeLoopbackPorts } from "./ports.js";
import { type StartedProcess, stopProcesses } from "./processes.js";
import { type S3Endpoint, startS3Server } from "./s3-server.js";
import { answers200, type TlsClient, waitUntil } from "./wait.js";
import { startWatchdog } from "./watchdog.js";

export type { FakeGpuNode } from "./gpu-nodes.js";
export type { S3Endpoint } from "./s3-server.js";

export interface ClusterOptions {
  /** Directory for certificates, data and logs; a fresh one under the OS tmp dir when omitted. */
  runDir?: string;
  /** Simulated GPU nodes to register; defaults to two H100 nodes and one A100 node. */
  gpuNodes?: readonly FakeGpuNode[];
  /** Bucket created on the S3 server; "kiln" by default. */
  bucket?: string;
  /**
   * Stop every component if this Node process dies without calling stop() (default true). The `up`
   * command turns it off so the cluster outlives it.
   */
  stopWithParent?: boolean;
  /** Bound on each wait for a component to become healthy; 90 s by default. */
  timeoutMs?: number;
  /** Progress lines; stderr by default. */
  log?: (line: string) => void;
  /**
   * Extra kube-controller-manager flags, e.g. a scale benchmark's client QPS: kwok pods start at
   * once, so rollouts of hundreds of Deployments wait on the controllers' default 20 QPS instead.
   */
  controllerManagerArgs?: readonly string[];
}

/** What tests need to reach the cluster; plain data, so it can cross process boundaries. */
export interface ClusterInfo {
  /** Admin (system:masters) kubeconfig with embedded credentials. */
  kubeconfigPath: string;
  apiServerUrl: string;
  s3: S3Endpoint;
  runDir: string;
  /** One <component>.log per started process. */
  logDir: string;
  /** Every process the launcher started (components and its watchdog), each leading its own process group. */
  pids: number[];
  processes: { name: string; pid: number; command: string; logFile: string }[];
  gpuNodes: FakeGpuNode[];
  /** Wall time from startCluster() to everything healthy. */
  startupMs: number;
}

export interface ClusterHandle extends ClusterInfo {
  /**
   * Stops exactly the processes this launcher started and waits until they are gone. Removes the
   * run dir, unless keepLogs is set: then data is removed and the logs stay, and their path is logged.
   */
  stop(options?: { keepLogs?: boolean }): Promise<void>;
  /**
   * Stops kube-apiserver (SIGTERM, as a rolling control-plane upgrade would) and starts it again on
   * the same port with the same flags and etcd; resolves once it is ready again. For fault tests:
   * every client sees its watches end and its requests refused while it is down.
   */
  restartApiserver(): Promise<void>;
}

/** The plain-data part of a handle, for provide/inject and state files. */
export function clusterInfoOf(handle: ClusterHandle): ClusterInfo {
  const { kubeconfigPath, apiServerUrl, s3, runDir, logDir, pids, processes, gpuNodes, startupMs } = handle;
  return { kubeconfigPath, apiServerUrl, s3, runDir, logDir, pids, processes, gpuNodes, startupMs };
}

const defaultLog = (line: string) => process.stderr.write(`[kiln cluster] ${line}\n`);

/**
 * Starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok with fake GPU nodes, and
 * an S3 server with a bucket, all on free loopback ports, and resolves once all of them are healthy.
 * On failure it stops what it started, keeps the logs and rejects naming their folder.
 */
export async function startCluster(options: ClusterOptions = {}): Promise<ClusterHandle> {
  const started = Date.now();
  const log = options.log ?? defaultLog;
  const timeoutMs = options.timeoutMs ?? 90_000;
  const runDir = options.runDir ?? (await mkdtemp(join(tmpdir(), "kiln-cluster-")));
  const logDir = join(runDir, "logs");
  const pkiDir = join(runDir, "pki");
  await mkdir(logDir, { recursive: true });
  await mkdir(pkiDir, { recursive: true, mode: 0o700 });

  const processes: StartedProcess[] = [];
  // Settles when startup fails, so the waits still running in parallel give up instead of polling on.
  let cancel: (reason: string) => void = () => undefined;
  const cancelled = new Promise<string>((resolve) => {
    cancel = resolve;
  });
  const abortOn = (...exits: Promise<string>[]) => Promise.race([cancelled, ...exits]);
  const watchdog = options.stopWithParent === false ? undefined : startWatchdog(runDir);
  const pids = () => [...(watchdog ? [watchdog.pid] : []), ...processes.map((p) => p.pid)];
  const track = (proc: StartedProcess) => {
    processes.push(proc);
    watchdog?.track(processes.map((p) => p.pid));
    return proc;
  };

  const stop = async ({ keepLogs = false } = {}) => {
    // The watchdog goes first so it cannot race us; then the components, the apiserver's clients
    // before the apiserver and etcd last, so nothing logs a burst of connection errors.
    await stopProcesses([...(watchdog ? [watchdog.pid] : []), ...[...processes].reverse().map((p) => p.pid)]);
    if (keepLogs) {
      await Promise.all(
        ["etcd", "s3", "pki"].map((dir) => rm(join(runDir, dir), { recursive: true, force: true })),
      );
      log(`component logs kept in ${logDir}`);
    } else {
      await rm(runDir, { recursive: true, force: true });
    }
  };

  try {
    const [etcdClient, etcdPeer, apiserver, controllerManager, scheduler, kwok, s3] =
      await freeLoopbackPorts(7);
    const ports = { etcdClient, etcdPeer, apiserver, controllerManager, scheduler, kwok, s3 } as Ports;
    const pki = await createClusterPki(pkiDir);
    const common = { runDir, logDir, ports, pki };
    const apiServerUrl = `https://127.0.0.1:${ports.apiserver}`;
    const kubeconfigPath = join(runDir, "admin.kubeconfig");
    const componentKubeconfigs = {
      controllerManager: join(pkiDir, "controller-manager.kubeconfig"),
      scheduler: join(pkiDir, "scheduler.kubeconfig"),
      kwok: join(pkiDir, "kwok.kubeconfig"),
    };
    await Promise.all([
      writeKubeconfig(kubeconfigPath, apiServerUrl, pki.ca.cert, pki.admin),
      writeKubeconfig(
        componentKubeconfigs.controllerManager,
        apiServerUrl,
        pki.ca.cert,
        pki.controllerManager,
      ),
      writeKubeconfig(componentKubeconfigs.scheduler, apiServerUrl, pki.ca.cert, pki.scheduler),
      writeKubeconfig(componentKubeconfigs.kwok, apiServerUrl, pki.ca.cert, pki.kwok),
    ]);
    const tls: TlsClient = {
      ca: await readFile(pki.ca.cert),
      cert: await readFile(pki.admin.cert),
      key: await readFile(pki.admin.key),
    };
    const healthy = (proc: StartedProcess, url: string, withTls = true) =>
      waitUntil(`${proc.name} healthy at ${url}`, answers200(url, withTls ? tls : undefined), {
        timeoutMs,
        abort: abortOn(proc.exited),
      });

    // The S3 server is independent of the rest and starts first; the apiserver would retry an etcd
    // that is not up yet, but only after a burst of connection errors in its log, so it waits (~1 s).
    const s3Server = await startS3Server({
      runDir,
      logDir,
      port: ports.s3,
      bucket: options.bucket ?? "kiln",
    });
    track(s3Server.process);
    const etcd = track(await startEtcd(common));
    await healthy(etcd, `http://127.0.0.1:${ports.etcdClient}/health`, false);
    let api = track(startApiserver(common));
    await healthy(api, `${apiServerUrl}/readyz`);
    log(`kube-apiserver ready after ${((Date.now() - started) / 1000).toFixed(1)} s`);

    const kcm = track(
      startControllerManager(common, componentKubeconfigs.controllerManager, options.controllerManagerArgs),
    );
    const sched = track(startScheduler(common, componentKubeconfigs.scheduler));
    const kwokProc = track(startKwok(common, componentKubeconfigs.kwok));
    const kubeConfig = new KubeConfig();
    kubeConfig.loadFromFile(kubeconfigPath);
    const core = kubeConfig.makeApiClient(CoreV1Api);
    const gpuNodes = [...(options.gpuNodes ?? defaultGpuNodes)];
    const anyExit = abortOn(api.exited, kcm.exited, sched.exited, kwokProc.exited);
    await Promise.all([
      healthy(kcm, `https://127.0.0.1:${ports.controllerManager}/healthz`),
      healthy(sched, `https://127.0.0.1:${ports.scheduler}/healthz`),
      healthy(kwokProc, `http://127.0.0.1:${ports.kwok}/healthz`, false),
      createGpuNodes(core, gpuNodes, { timeoutMs, abort: anyExit }),
      // Pods can only be admitted once the service-account controller made the namespace's default
      // account, and they mount kube-root-ca.crt, which the root CA publisher writes: both prove the
      // controller manager's token and CA plumbing works.
      waitUntil(
        "service account default/default and ConfigMap default/kube-root-ca.crt created by the controller manager",
        async () => {
          await core.readNamespacedServiceAccount({ name: "default", namespace: "default" });
          await core.readNamespacedConfigMap({ name: "kube-root-ca.crt", namespace: "default" });
          return true;
        },
        { timeoutMs, abort: abortOn(api.exited, kcm.exited), intervalMs: 200 },
      ),
      s3Server.ready({ timeoutMs, abort: cancelled }),
    ]);
    const s3Endpoint = s3Server.s3;
    const restartApiserver = async () => {
      await stopProcesses([api.pid]);
      const next = startApiserver(common);
      // Replaced in place: stop() and the watchdog must stop the new process, not the old pid.
      processes[processes.indexOf(api)] = next;
      watchdog?.track(processes.map((p) => p.pid));
      api = next;
      await healthy(next, `${apiServerUrl}/readyz`);
    };

    const startupMs = Date.now() - started;
    log(
      `control plane up in ${(startupMs / 1000).toFixed(1)} s (kubeconfig ${kubeconfigPath}, S3 ${s3Endpoint.endpoint})`,
    );
    return {
      kubeconfigPath,
      apiServerUrl,
      s3: s3Endpoint,
      runDir,
      logDir,
      pids: pids(),
      processes: processes.map(({ name, pid, command, logFile }) => ({ name, pid, command, logFile })),
      gpuNodes,
      startupMs,
      stop,
      restartApiserver,
    };
  } catch (err) {
    cancel("startup failed elsewhere");
    await stop({ keepLogs: true }).catch((stopErr: Error) =>
      log(`cleanup after failed start: ${stopErr.message}`),
    );
    throw new Error(
      `starting the test cluster failed: ${(err as Error).message}; component logs in ${logDir}`,
    );
  }
}
