// What the operator's cluster-tier tests share: the operator started in-process or as a child
// process against the real control plane, a stand-in for the build Job's container (kwok runs no
// containers, so the test writes what the builder would to the real S3 server), watches that record
// every event, and namespaces per test.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { createWriteStream } from "node:fs";
import { readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { type KubeConfig, type V1Job, type V1Pod, Watch } from "@kubernetes/client-node";
import { pino } from "pino";
import { parseAllDocuments } from "yaml";
import { type ObjectStore, openObjectStore } from "../../lib/object-store.js";
import { binaryPath } from "../../test/cluster/binaries.js";
import { testCluster, testKubeConfig, testS3 } from "../../test/cluster/env.js";
import { publishStandInEngine } from "../../test/fixtures/stand-in-engine.js";
import type { EngineBuildSpec } from "../src/api/enginebuild.js";
import type { InferenceModelSpec } from "../src/api/inferencemodel.js";
import type { InferenceModel } from "../src/api/types.js";
import { CONFIG_MAP_KEY, loadConfig } from "../src/config.js";
import { isAlreadyExists, KubeClient, type KubeObject, type ResourceType } from "../src/controller/kube.js";
import { configFromConfigMap, type Operator, startOperator } from "../src/main.js";

export const kc: KubeConfig = testKubeConfig();
export const client = new KubeClient(kc);

const s3 = testS3();
// The operator's S3 clients use the default AWS credential chain, like in a pod with a Secret.
process.env.AWS_ACCESS_KEY_ID = s3.accessKeyId;
process.env.AWS_SECRET_ACCESS_KEY = s3.secretAccessKey;

export const NAMESPACE: ResourceType = {
  apiVersion: "v1",
  kind: "Namespace",
  plural: "namespaces",
  namespaced: false,
};
export const CONFIG_MAP: ResourceType = {
  apiVersion: "v1",
  kind: "ConfigMap",
  plural: "configmaps",
  namespaced: true,
};
export const POD: ResourceType = { apiVersion: "v1", kind: "Pod", plural: "pods", namespaced: true };
const CRD: ResourceType = {
  apiVersion: "apiextensions.k8s.io/v1",
  kind: "CustomResourceDefinition",
  plural: "customresourcedefinitions",
  namespaced: false,
};

export const uniqueName = (prefix: string) => `${prefix}-${randomBytes(3).toString("hex")}`;

/** Server-side applies the committed crds/*.yaml (what users install) and waits until served. */
export async function installCrds(): Promise<void> {
  for (const file of ["inferencemodels.kiln.dev.yaml", "enginebuilds.kiln.dev.yaml"]) {
    const text = await readFile(new URL(`../../crds/${file}`, import.meta.url), "utf8");
    for (const doc of parseAllDocuments(text)) await client.apply(CRD, doc.toJSON() as KubeObject);
  }
  for (const name of ["inferencemodels.kiln.dev", "enginebuilds.kiln.dev"]) {
    await Watched.until<KubeObject & { status?: { conditions?: { type: string; status: string }[] } }>(
      "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
      { fieldSelector: `metadata.name=${name}` },
      (objs) =>
        [...objs.values()].some((c) =>
          c.status?.conditions?.some((x) => x.type === "Established" && x.status === "True"),
        ),
      { timeoutMs: 30_000, describe: `CRD ${name} Established` },
    );
  }
}

export async function createNamespace(prefix: string): Promise<string> {
  const name = uniqueName(prefix);
  await client.create(NAMESPACE, { apiVersion: "v1", kind: "Namespace", metadata: { name } });
  return name;
}

export async function deleteNamespace(name: string): Promise<void> {
  await client.delete(NAMESPACE, undefined, name);
}

/** The operator's environment for one test file: its own store prefix and lease, short lease timings. */
export function operatorEnv(overrides: Record<string, string> = {}): Record<string, string> {
  const id = uniqueName("op");
  return {
    KILN_TOOLCHAIN_VERSION: "tc-1",
    KILN_BUILDER_IMAGE: "kiln/builder:tc-1",
    KILN_RUNTIME_IMAGE: "kiln/runtime:tc-1",
    // A fresh prefix per operator group: engine keys repeat across tests, cached engines must not.
    KILN_STORE_URI: `s3://${s3.bucket}/${id}`,
    KILN_STORE_ENDPOINT: s3.endpoint,
    KILN_STORE_REGION: s3.region,
    KILN_NAMESPACE: "default",
    KILN_LEASE_NAME: id,
    KILN_LEASE_DURATION_SECONDS: "4",
    KILN_LEASE_RENEW_DEADLINE_SECONDS: "3",
    KILN_LEASE_RETRY_PERIOD_SECONDS: "1",
    KILN_BUILD_RETRY_BASE_SECONDS: "1",
    KILN_HTTP_PORT: "0",
    ...overrides,
  };
}

export const storeOf = (env: Record<string, string>): ObjectStore =>
  openObjectStore({ uri: env.KILN_STORE_URI ?? "", endpoint: s3.endpoint, region: s3.region });

function logFile(name: string): string {
  return join(testCluster().logDir ?? tmpdir(), `${name}.log`);
}

export interface TestOperator extends Operator {
  identity: string;
  lostLeadership: boolean;
}

/** The operator in this process, with its JSON log in the cluster's log folder. */
export async function startTestOperator(
  env: Record<string, string>,
  identity = uniqueName("kiln-operator"),
): Promise<TestOperator> {
  const fullEnv = { ...env, POD_NAME: identity };
  const configMapRef = env.KILN_CONFIG_MAP?.split("/");
  const config =
    configMapRef?.[0] && configMapRef[1]
      ? await configFromConfigMap(client, { namespace: configMapRef[0], name: configMapRef[1] }, fullEnv)
      : loadConfig(fullEnv);
  const log = pino({ level: "debug", base: { identity } }, createWriteStream(logFile(identity)));
  const state = { lostLeadership: false };
  const operator = await startOperator({
    config,
    kubeConfig: kc,
    log,
    ...(configMapRef?.[0] && configMapRef[1]
      ? { configMap: { namespace: configMapRef[0], name: configMapRef[1], env: fullEnv } }
      : {}),
    onLostLeadership: () => {
      state.lostLeadership = true;
    },
  });
  return Object.assign(operator, {
    identity,
    get lostLeadership() {
      return state.lostLeadership;
    },
  });
}

export interface OperatorProcess {
  child: ChildProcess;
  exited: Promise<number | null>;
}

/** The operator as its own process (`node operator/src/main.ts`), as a pod would run it. */
export function spawnOperator(env: Record<string, string>, identity: string): OperatorProcess {
  const out = createWriteStream(logFile(identity));
  const child = spawn(process.execPath, ["--import", "tsx", "operator/src/main.ts"], {
    cwd: new URL("../..", import.meta.url).pathname,
    env: { ...process.env, ...env, POD_NAME: identity, KUBECONFIG: testCluster().kubeconfigPath },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout?.pipe(out);
  child.stderr?.pipe(out);
  const exited = new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)));
  return { child, exited };
}

export async function kubectl(...args: string[]): Promise<string> {
  const { stdout } = await promisify(execFile)(binaryPath("kubectl"), [
    "--kubeconfig",
    testCluster().kubeconfigPath,
    ...args,
  ]);
  return stdout;
}

export function inferenceModel(
  namespace: string,
  name: string,
  spec: Partial<InferenceModelSpec> = {},
): InferenceModel {
  return {
    apiVersion: "kiln.dev/v1alpha1",
    kind: "InferenceModel",
    metadata: { name, namespace },
    spec: {
      // A revision per namespace: tests share one object store, and an engine another test built
      // for the same input would otherwise be a cache hit here.
      model: { source: "hf://TinyLlama/TinyLlama-1.1B-Chat-v1.0", revision: `rev-${namespace}` },
      gpu: { products: ["H100"] },
      ...spec,
    },
  };
}

/**
 * Plays the build Job's container: kwok completes a Job's pod at once but runs nothing, so when a
 * Job appears this writes the engine its spec asks for, unless `succeeds` says this build fails
 * (then the Job completes without a manifest, which the operator must count as a failed attempt).
 */
export class FakeBuilder {
  readonly jobs: V1Job[] = [];
  private readonly watch: Promise<Watched<V1Job & KubeObject>>;

  constructor(
    namespace: string,
    store: ObjectStore,
    succeeds: (spec: EngineBuildSpec) => boolean = () => true,
  ) {
    this.watch = Watched.start<V1Job & KubeObject>(`/apis/batch/v1/namespaces/${namespace}/jobs`, {}, (e) => {
      if (e.type !== "ADDED") return;
      this.jobs.push(e.object);
      const env = e.object.spec?.template.spec?.containers[0]?.env ?? [];
      const spec = JSON.parse(
        env.find((v) => v.name === "KILN_BUILD_SPEC")?.value ?? "{}",
      ) as EngineBuildSpec;
      if (succeeds(spec)) return publishStandInEngine(store, spec);
    });
  }

  async ready(): Promise<void> {
    await this.watch;
  }

  async stop(): Promise<void> {
    (await this.watch).stop();
  }
}

export interface RecordedEvent<T> {
  type: "ADDED" | "MODIFIED" | "DELETED";
  object: T;
}

/**
 * A watch that keeps every event and the latest state of each object, and resolves `until` the
 * moment a condition over that state holds (checked on every event: no polling, no sleeps).
 */
export class Watched<T extends KubeObject> {
  readonly events: RecordedEvent<T>[] = [];
  readonly objects = new Map<string, T>();
  private readonly waiters = new Set<() => void>();
  private abort: (() => void) | undefined;
  private closed: string | undefined;

  static async start<T extends KubeObject>(
    path: string,
    query: Record<string, string> = {},
    onEvent?: (e: RecordedEvent<T>) => unknown,
  ): Promise<Watched<T>> {
    const w = new Watched<T>();
    const controller = await new Watch(kc).watch(
      path,
      query,
      (type, object: T) => {
        if (type !== "ADDED" && type !== "MODIFIED" && type !== "DELETED") return;
        const event = { type, object } as RecordedEvent<T>;
        w.events.push(event);
        const key = `${object.metadata?.namespace ?? ""}/${object.metadata?.name}`;
        if (type === "DELETED") w.objects.delete(key);
        else w.objects.set(key, object);
        void Promise.resolve(onEvent?.(event)).finally(() => w.notify());
      },
      (err) => {
        w.closed = `watch on ${path} ended: ${err ?? "closed by the server"}`;
        w.notify();
      },
    );
    w.abort = () => controller.abort();
    return w;
  }

  /** Watch `path` until `done` holds, then stop. */
  static async until<T extends KubeObject>(
    path: string,
    query: Record<string, string>,
    done: (objects: Map<string, T>) => boolean,
    options: { timeoutMs: number; describe: string },
  ): Promise<void> {
    const w = await Watched.start<T>(path, query);
    try {
      await w.until(done, options);
    } finally {
      w.stop();
    }
  }

  until(
    done: (objects: Map<string, T>, events: RecordedEvent<T>[]) => boolean,
    options: { timeoutMs: number; describe: string },
  ): Promise<void> {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (done(this.objects, this.events)) {
          finish();
          resolve();
        } else if (this.closed) {
          finish();
          reject(new Error(`${options.describe}: ${this.closed}`));
        }
      };
      const timer = setTimeout(() => {
        finish();
        const last = [...this.objects.values()].map((o) => ({
          name: o.metadata?.name,
          status: (o as { status?: unknown }).status,
        }));
        reject(
          new Error(
            `${options.describe}: not reached within ${options.timeoutMs} ms; last seen ${JSON.stringify(last)}`,
          ),
        );
      }, options.timeoutMs);
      const finish = () => {
        clearTimeout(timer);
        this.waiters.delete(check);
      };
      this.waiters.add(check);
      check();
    });
  }

  list(): T[] {
    return [...this.objects.values()];
  }

  stop(): void {
    this.abort?.();
    this.closed ??= "stopped";
  }

  private notify(): void {
    for (const w of [...this.waiters]) w();
  }
}

/** Creates `obj`, or leaves it when it exists (re-runs against a cluster from test/cluster/up). */
export async function ensure(rt: ResourceType, obj: KubeObject): Promise<void> {
  try {
    await client.create(rt, obj);
  } catch (err) {
    if (!isAlreadyExists(err)) throw err;
  }
}

export const configMapText = (doc: Record<string, unknown>) => ({ [CONFIG_MAP_KEY]: JSON.stringify(doc) });

export const newIdentity = () => `kiln-operator-${randomUUID().slice(0, 8)}`;

/** Collection paths of one namespace. */
export const paths = (namespace: string) => ({
  models: `/apis/kiln.dev/v1alpha1/namespaces/${namespace}/inferencemodels`,
  builds: `/apis/kiln.dev/v1alpha1/namespaces/${namespace}/enginebuilds`,
  jobs: `/apis/batch/v1/namespaces/${namespace}/jobs`,
  deployments: `/apis/apps/v1/namespaces/${namespace}/deployments`,
  services: `/api/v1/namespaces/${namespace}/services`,
  pods: `/api/v1/namespaces/${namespace}/pods`,
});

/**
 * A runtime pod that receives traffic: Running, Ready and not on its way out. (kwok leaves a
 * finished build pod's Ready condition as it was, so the phase and component matter.)
 */
export const servesTraffic = (pod: V1Pod) =>
  pod.metadata?.labels?.["app.kubernetes.io/component"] === "runtime" &&
  pod.status?.phase === "Running" &&
  !pod.metadata?.deletionTimestamp &&
  (pod.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True") ?? false);
