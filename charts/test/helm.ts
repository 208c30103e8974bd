// What the chart's cluster tests share: the pinned helm and kubectl run against the test cluster,
// a watch that resolves when a condition holds, a kubeconfig of a ServiceAccount token, and the
// build Job's stand-in.
import { execFile } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { KubeConfig, Watch } from "@kubernetes/client-node";
import { parseAllDocuments } from "yaml";
import type { KubeObject } from "../../operator/src/controller/kube.js";
import { binaryPath, pinnedVersion } from "../../test/cluster/binaries.js";
import { testCluster, testKubeConfig } from "../../test/cluster/env.js";

export const CHART_DIR = fileURLToPath(new URL("../kiln/", import.meta.url));
export const adminKubeConfig: KubeConfig = testKubeConfig();

const exec = promisify(execFile);

export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

async function runTool(path: string, args: string[], env: NodeJS.ProcessEnv, input?: string): Promise<Ran> {
  const child = exec(path, args, { env, maxBuffer: 64 * 1024 * 1024 });
  if (input !== undefined) child.child.stdin?.end(input);
  try {
    const { stdout, stderr } = await child;
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === "number" ? e.code : 1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" };
  }
}

/** helm with its own config/cache/data folders, so a test run neither reads nor writes ~/.config/helm. */
export class Helm {
  private constructor(private readonly home: string) {}

  static async create(): Promise<Helm> {
    return new Helm(await mkdtemp(join(tmpdir(), "kiln-helm-")));
  }

  run(...args: string[]): Promise<Ran> {
    return runTool(binaryPath("helm"), args, {
      PATH: process.env.PATH,
      KUBECONFIG: testCluster().kubeconfigPath,
      HELM_CONFIG_HOME: join(this.home, "config"),
      HELM_CACHE_HOME: join(this.home, "cache"),
      HELM_DATA_HOME: join(this.home, "data"),
    });
  }

  /** Like run, but a non-zero exit throws with helm's stderr. */
  async ok(...args: string[]): Promise<string> {
    const r = await this.run(...args);
    if (r.code !== 0) throw new Error(`helm ${args.join(" ")} exited ${r.code}: ${r.stderr}`);
    return r.stdout;
  }

  /** `helm template` of the chart, parsed; the cluster's Kubernetes version is the one assumed. */
  async template(values: string[], ...extra: string[]): Promise<RenderedObject[]> {
    const text = await this.ok(
      "template",
      "kiln",
      CHART_DIR,
      "--namespace",
      "kiln-system",
      "--kube-version",
      pinnedVersion("kube-apiserver"),
      ...values.flatMap((v) => ["--set", v]),
      ...extra,
    );
    return parseAllDocuments(text)
      .map((d) => d.toJSON() as RenderedObject | null)
      .filter((o): o is RenderedObject => o !== null);
  }

  async dispose(): Promise<void> {
    await rm(this.home, { recursive: true, force: true });
  }
}

export type RenderedObject = KubeObject & Record<string, unknown>;

export function kubectl(args: string[], opts: { kubeconfig?: string; input?: string } = {}): Promise<Ran> {
  return runTool(
    binaryPath("kubectl"),
    ["--kubeconfig", opts.kubeconfig ?? testCluster().kubeconfigPath, ...args],
    { PATH: process.env.PATH },
    opts.input,
  );
}

/** A KubeConfig that authenticates with `token` (a ServiceAccount's) against the test cluster. */
export function tokenKubeConfig(token: string): KubeConfig {
  const cluster = adminKubeConfig.getCurrentCluster();
  if (!cluster) throw new Error("the test kubeconfig has no current cluster");
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [cluster],
    users: [{ name: "sa", token }],
    contexts: [{ name: "sa", cluster: cluster.name, user: "sa" }],
    currentContext: "sa",
  });
  return kc;
}

/**
 * A watch on a collection that keeps the latest state of every object and resolves `until` the
 * moment a condition over them holds (checked on every event: no polling).
 */
export class Watched<T extends KubeObject> {
  readonly objects = new Map<string, T>();
  private readonly waiters = new Set<() => void>();
  private abort: (() => void) | undefined;
  private ended: string | undefined;
  private retry: NodeJS.Timeout | undefined;

  static async start<T extends KubeObject>(
    path: string,
    onAdded?: (obj: T) => Promise<void> | void,
  ): Promise<Watched<T>> {
    const w = new Watched<T>();
    await w.open(path, onAdded, 0);
    return w;
  }

  private async open(
    path: string,
    onAdded: ((obj: T) => Promise<void> | void) | undefined,
    retries: number,
  ): Promise<void> {
    // A fresh watch starts with an ADDED per object: the state is rebuilt from scratch.
    this.objects.clear();
    const controller = await new Watch(adminKubeConfig).watch(
      path,
      {},
      (type, obj: T) => {
        const key = `${obj.metadata?.namespace ?? ""}/${obj.metadata?.name}`;
        if (type === "DELETED") this.objects.delete(key);
        else if (type === "ADDED" || type === "MODIFIED") this.objects.set(key, obj);
        else return;
        void Promise.resolve(type === "ADDED" ? onAdded?.(obj) : undefined).finally(() => this.notify());
      },
      (err) => {
        if (this.ended) return;
        // The API server answers 429 while the watch cache of a just-created CRD initializes;
        // clients are to come back, which this does with a growing backoff.
        if (String(err).includes("Too Many Requests") && retries < 20) {
          this.retry = setTimeout(
            () => void this.open(path, onAdded, retries + 1),
            100 * 2 ** Math.min(retries, 4),
          );
          return;
        }
        this.ended = `watch on ${path} ended: ${err ?? "closed by the server"}`;
        this.notify();
      },
    );
    this.abort = () => controller.abort();
  }

  get(name: string): T | undefined {
    return [...this.objects.values()].find((o) => o.metadata?.name === name);
  }

  list(): T[] {
    return [...this.objects.values()];
  }

  until(done: (objects: T[]) => boolean, options: { timeoutMs: number; describe: string }): Promise<void> {
    return new Promise((resolve, reject) => {
      const finish = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      const check = () => {
        if (done(this.list())) {
          finish();
          resolve();
        } else if (this.ended) {
          finish();
          reject(new Error(`${options.describe}: ${this.ended}`));
        }
      };
      const timer = setTimeout(() => {
        finish();
        reject(
          new Error(
            `${options.describe}: not reached in ${options.timeoutMs} ms; last seen ${JSON.stringify(
              this.list().map((o) => ({
                name: o.metadata?.name,
                status: (o as { status?: unknown }).status,
              })),
            )}`,
          ),
        );
      }, options.timeoutMs);
      this.waiters.add(check);
      check();
    });
  }

  stop(): void {
    this.ended ??= "stopped";
    clearTimeout(this.retry);
    this.abort?.();
  }

  private notify(): void {
    for (const w of [...this.waiters]) w();
  }
}
