import { join } from "node:path";
import type { V1Container, V1Pod } from "@kubernetes/client-node";
import type { Logger } from "pino";
import { Informer } from "../../operator/src/controller/informer.js";
import {
  isNotFound,
  type KubeClient,
  type KubeObject,
  resourcePath,
} from "../../operator/src/controller/kube.js";
import { freeLoopbackPorts } from "../cluster/ports.js";
import { linkClaimMounts } from "./claims.js";
import { type ContainerProcess, startContainer, type Terminated } from "./container.js";
import { ContainerConfigError, type DataSource, resolveContainerEnv } from "./env.js";
import { checkHostPathMounts } from "./host-paths.js";
import { commandLineFor, imageEntryFor, repoRoot } from "./images.js";
import { type ContainerView, fakePodIp, HOST_IP, podStatusFor } from "./pod-status.js";
import { startReadinessProbe } from "./probe.js";
import { CONFIG_MAP, POD, SECRET } from "./resources.js";

/** Pod annotation with the loopback port each declared container port is mapped to: `{"8000":41234}`. */
export const PORTS_ANNOTATION = "pod-runner.kiln.dev/ports";

/** Printed on stdout once the node is Ready and the pod watch is synced; parents wait for it. */
export const READY_LINE = "kiln pod runner ready";

const CONFIG_RETRY_MS = 2_000;
const BACKOFF_START_MS = 10_000;
const BACKOFF_MAX_MS = 300_000;

interface PodRun {
  key: string;
  uid: string;
  pod: V1Pod;
  podIP: string;
  dir: string;
  startTime: string;
  view: ContainerView;
  proc?: ContainerProcess;
  /** Declared containerPort (and its name) → local port. */
  ports: Map<string, number>;
  stopProbe?: () => void;
  timer?: NodeJS.Timeout;
  deleting?: Promise<void>;
  /** Status writes in order, one at a time. */
  writes: Promise<void>;
}

export interface PodRunnerOptions {
  client: KubeClient;
  nodeName: string;
  /** Per-pod folders (logs, termination messages, scratch) go here. */
  runDir: string;
  /** Folder that stands for the node's claims: a mounted claim `<claim>` is `<claims>/<claim>`. */
  claimsDir: string;
  log: Logger;
  /** Called with the pids of every running container whenever they change (for a watchdog). */
  onPids?: (pids: number[]) => void;
}

/**
 * Runs the pods the scheduler bound to one node as local processes: the kubelet's job, minus images,
 * volumes and namespaces. One container per pod, as every pod of the operator has.
 */
export class PodRunner {
  private readonly runs = new Map<string, PodRun>();
  private readonly informer: Informer<V1Pod & { metadata: { name: string } }>;
  private stopped = false;
  private podsStarted = 0;

  constructor(private readonly opts: PodRunnerOptions) {
    this.informer = new Informer(
      opts.client.listWatch(POD, undefined, undefined, `spec.nodeName=${opts.nodeName}`),
      { log: opts.log.child({ informer: "Pod" }), resyncMs: 30_000 },
    );
    this.informer.on({
      add: (p) => this.observe(p),
      update: (_, p) => this.observe(p),
      delete: (p) => this.forget(p),
    });
  }

  async start(): Promise<void> {
    await this.informer.start();
  }

  /** Stops every container (their grace periods, capped at 10 s) and the watch. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.informer.stop();
    await Promise.all(
      [...this.runs.values()].map(async (run) => {
        run.stopProbe?.();
        clearTimeout(run.timer);
        await run.proc?.stop(Math.min(this.graceMs(run.pod), 10_000));
      }),
    );
    this.runs.clear();
  }

  private graceMs(pod: V1Pod): number {
    return (pod.metadata?.deletionGracePeriodSeconds ?? pod.spec?.terminationGracePeriodSeconds ?? 30) * 1000;
  }

  private observe(pod: V1Pod): void {
    if (this.stopped) return;
    const uid = pod.metadata?.uid ?? "";
    const run = this.runs.get(uid);
    if (run) run.pod = pod;
    if (pod.metadata?.deletionTimestamp) {
      void this.deletePod(pod, run);
      return;
    }
    if (run || pod.status?.phase === "Succeeded" || pod.status?.phase === "Failed") return;
    if (pod.status?.containerStatuses?.some((c) => c.started || c.state?.running)) {
      // Its process belonged to an earlier runner and is gone; a kubelet that lost its containers
      // reports them failed, and the pod's controller replaces it.
      void this.writeStatus(pod, {
        phase: "Failed",
        reason: "PodRunnerRestarted",
        message: "the pod runner that ran this pod restarted",
      });
      return;
    }
    void this.startPod(pod).catch((err: Error) =>
      this.opts.log.error({ pod: keyOf(pod), err: err.message }, "starting pod failed"),
    );
  }

  private forget(pod: V1Pod): void {
    const run = this.runs.get(pod.metadata?.uid ?? "");
    if (!run) return;
    // Force-deleted (grace 0) by someone else: nothing waits for a graceful stop.
    run.stopProbe?.();
    clearTimeout(run.timer);
    void run.proc?.stop(0);
    this.runs.delete(run.uid);
    this.reportPids();
  }

  private async startPod(pod: V1Pod): Promise<void> {
    const containers = pod.spec?.containers ?? [];
    const container = containers[0];
    const uid = pod.metadata?.uid ?? "";
    if (!container) return;
    const key = keyOf(pod);
    const run: PodRun = {
      key,
      uid,
      pod,
      podIP: fakePodIp(++this.podsStarted),
      dir: join(this.opts.runDir, "pods", `${pod.metadata?.namespace}_${pod.metadata?.name}_${uid}`),
      startTime: new Date().toISOString(),
      view: {
        name: container.name,
        image: container.image ?? "",
        ready: false,
        restartCount: 0,
        final: false,
      },
      ports: new Map(),
      writes: Promise.resolve(),
    };
    this.runs.set(uid, run);
    if (containers.length > 1 || pod.spec?.initContainers?.length) {
      run.view.waiting = {
        reason: "Unsupported",
        message: "the pod runner runs pods of exactly one container and no init containers",
      };
      this.pushStatus(run);
      return;
    }
    const declared = container.ports ?? [];
    const local = await freeLoopbackPorts(declared.length);
    declared.forEach((p, i) => {
      const port = local[i] ?? 0;
      run.ports.set(String(p.containerPort), port);
      if (p.name) run.ports.set(p.name, port);
    });
    if (declared.length) {
      const mapping = Object.fromEntries(
        declared.map((p) => [String(p.containerPort), run.ports.get(String(p.containerPort))]),
      );
      await this.opts.client.request(
        "PATCH",
        resourcePath(POD, pod.metadata?.namespace, pod.metadata?.name),
        { metadata: { annotations: { [PORTS_ANNOTATION]: JSON.stringify(mapping) } } },
        "application/merge-patch+json",
      );
    }
    await this.runContainer(run, container);
  }

  private async runContainer(run: PodRun, container: V1Container): Promise<void> {
    if (this.stopped || run.deleting) return;
    const entry = imageEntryFor(container.image ?? "");
    if (!entry) {
      run.view.waiting = {
        reason: "ErrImagePull",
        message: `image ${container.image} is not one the pod runner maps to a local entrypoint (test/pod-runner/images.ts)`,
      };
      this.pushStatus(run);
      return;
    }
    const dir = join(run.dir, `${container.name}-${run.view.restartCount}`);
    let argv: string[];
    let podEnv: Record<string, string>;
    let claims: string;
    try {
      argv = commandLineFor(entry, container);
      podEnv = await resolveContainerEnv(run.pod, container, this.readData, {
        podIP: run.podIP,
        hostIP: HOST_IP,
      });
      claims = await linkClaimMounts(run.pod, container, this.opts.claimsDir, join(dir, "pvc"));
      await checkHostPathMounts(run.pod, container);
    } catch (err) {
      run.view.waiting = { reason: "CreateContainerConfigError", message: (err as Error).message };
      this.pushStatus(run);
      // Like the kubelet: the Secret or ConfigMap may appear later, so keep trying while the pod exists.
      if (err instanceof ContainerConfigError) {
        run.timer = setTimeout(() => void this.runContainer(run, container), CONFIG_RETRY_MS);
      }
      return;
    }
    const firstPort = container.ports?.[0];
    const env = {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      HOME: join(dir, "home"),
      HOSTNAME: run.pod.metadata?.name ?? "",
      ...entry.env({ scratch: dir, claims }),
      ...podEnv,
      // The one rewrite: processes share the host's network, so the declared port becomes a free
      // loopback port (recorded in the PORTS_ANNOTATION); a program reads its port from PORT.
      ...(firstPort ? { PORT: String(run.ports.get(String(firstPort.containerPort))) } : {}),
    };
    const proc = await startContainer({
      dir,
      argv,
      env,
      cwd: repoRoot,
      ...(container.terminationMessagePolicy
        ? { terminationMessagePolicy: container.terminationMessagePolicy }
        : {}),
    });
    run.proc = proc;
    run.view = {
      ...run.view,
      pid: proc.pid,
      startedAt: proc.startedAt,
      ready: false,
      terminated: undefined,
      waiting: undefined,
    };
    this.opts.log.info({ pod: run.key, pid: proc.pid, argv, log: proc.logFile }, "container started");
    this.reportPids();
    this.pushStatus(run);
    if (container.readinessProbe) {
      run.stopProbe = startReadinessProbe(
        container.readinessProbe,
        (port) => run.ports.get(String(port)) ?? Number(port),
        (ready) => {
          run.view.ready = ready;
          this.pushStatus(run);
        },
      );
    } else {
      run.view.ready = true;
    }
    void proc.exited.then((t) => this.onExit(run, container, t));
  }

  private onExit(run: PodRun, container: V1Container, t: Terminated): void {
    run.stopProbe?.();
    run.stopProbe = undefined;
    run.proc = undefined;
    this.reportPids();
    this.opts.log.info({ pod: run.key, exitCode: t.exitCode, signal: t.signal }, "container exited");
    const policy = run.pod.spec?.restartPolicy ?? "Always";
    const restart =
      !run.deleting && !this.stopped && (policy === "Always" || (policy === "OnFailure" && t.exitCode !== 0));
    run.view = { ...run.view, pid: undefined, ready: false };
    if (!restart) {
      run.view = { ...run.view, terminated: t, final: true };
      this.pushStatus(run);
      return;
    }
    const backoff = Math.min(BACKOFF_START_MS * 2 ** run.view.restartCount, BACKOFF_MAX_MS);
    run.view = {
      ...run.view,
      lastTerminated: t,
      terminated: undefined,
      restartCount: run.view.restartCount + 1,
      waiting: {
        reason: "CrashLoopBackOff",
        message: `back-off ${backoff / 1000}s restarting failed container ${container.name}`,
      },
    };
    this.pushStatus(run);
    run.timer = setTimeout(() => void this.runContainer(run, container), backoff);
  }

  /** Graceful deletion: SIGTERM, the grace period, SIGKILL, then the final delete a kubelet does. */
  private deletePod(pod: V1Pod, run: PodRun | undefined): Promise<void> {
    if (run?.deleting) return run.deleting;
    const work = async () => {
      if (run) {
        run.stopProbe?.();
        clearTimeout(run.timer);
        if (run.proc) await run.proc.stop(this.graceMs(pod));
      }
      try {
        await this.opts.client.request(
          "DELETE",
          resourcePath(POD, pod.metadata?.namespace, pod.metadata?.name),
          {
            gracePeriodSeconds: 0,
            preconditions: { uid: pod.metadata?.uid },
          },
        );
      } catch (err) {
        if (!isNotFound(err) && !/Precondition failed|409/.test((err as Error).message)) {
          this.opts.log.warn({ pod: keyOf(pod), err: (err as Error).message }, "final pod delete failed");
        }
      }
    };
    const deleting = work();
    if (run) run.deleting = deleting;
    return deleting;
  }

  private pushStatus(run: PodRun): void {
    const status = podStatusFor(run.view, run.podIP, run.startTime, new Date().toISOString());
    run.writes = run.writes.then(() => this.writeStatus(run.pod, status));
  }

  private async writeStatus(pod: V1Pod, status: object): Promise<void> {
    try {
      await this.opts.client.request(
        "PATCH",
        resourcePath(POD, pod.metadata?.namespace, pod.metadata?.name, "status"),
        { metadata: { uid: pod.metadata?.uid }, status },
        "application/merge-patch+json",
      );
    } catch (err) {
      if (!isNotFound(err))
        this.opts.log.warn({ pod: keyOf(pod), err: (err as Error).message }, "pod status write failed");
    }
  }

  private readonly readData: DataSource = async (kind, namespace, name) => {
    const obj = await this.opts.client.get<KubeObject & { data?: Record<string, string> }>(
      kind === "Secret" ? SECRET : CONFIG_MAP,
      namespace,
      name,
    );
    if (!obj) return undefined;
    const data = obj.data ?? {};
    return kind === "Secret"
      ? Object.fromEntries(
          Object.entries(data).map(([k, v]) => [k, Buffer.from(v, "base64").toString("utf8")]),
        )
      : data;
  };

  private reportPids(): void {
    this.opts.onPids?.([...this.runs.values()].flatMap((r) => (r.proc ? [r.proc.pid] : [])));
  }
}

const keyOf = (pod: V1Pod) => `${pod.metadata?.namespace}/${pod.metadata?.name}`;
