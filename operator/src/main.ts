import { randomUUID } from "node:crypto";
import { fileURLToPath } from "node:url";
import {
  KubeConfig,
  type V1Deployment,
  type V1Job,
  type V1Node,
  type V1Service,
} from "@kubernetes/client-node";
import Fastify, { type FastifyInstance } from "fastify";
import type { Logger } from "pino";
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import { componentLogger } from "../../lib/logging.js";
import { openObjectStore } from "../../lib/object-store.js";
import { EB_PHASES } from "./api/enginebuild.js";
import { GPU_PRODUCT_NAMES, type GpuProductName } from "./api/gpu.js";
import { LABELS, MANAGED_BY } from "./api/labels.js";
import type { EngineBuild, InferenceModel } from "./api/types.js";
import {
  applyConfigChange,
  CONFIG_MAP_KEY,
  ConfigError,
  configMapRef,
  loadConfig,
  type OperatorConfig,
} from "./config.js";
import { type CacheTransform, trimJob, trimNode } from "./controller/cache-trim.js";
import { type Clock, realClock } from "./controller/clock.js";
import { EventRecorder } from "./controller/events.js";
import { Informer } from "./controller/informer.js";
import { KubeClient, type KubeObject, objectKey, type ResourceType } from "./controller/kube.js";
import { LeaderElector } from "./controller/lease.js";
import { type Reconciler, runWorkers, WorkQueue } from "./controller/workqueue.js";
import { BuildAdmission, JOB, reconcileBuild } from "./enginebuild/reconcile.js";
import {
  DEPLOYMENT,
  EB_RESOURCE,
  IM_RESOURCE,
  INDEX,
  type ModelContext,
  reconcileModel,
  SERVICE,
} from "./inferencemodel/reconcile.js";
import { defaultRevisionResolver, type RevisionResolver } from "./inferencemodel/revision.js";

const NODE: ResourceType = { apiVersion: "v1", kind: "Node", plural: "nodes", namespaced: false };
const CONFIG_MAP: ResourceType = {
  apiVersion: "v1",
  kind: "ConfigMap",
  plural: "configmaps",
  namespaced: true,
};

type ConfigMapObject = KubeObject & { data?: Record<string, string> };

/** Reads the operator's ConfigMap and builds the configuration from it (env still wins). */
export async function configFromConfigMap(
  client: KubeClient,
  ref: { namespace: string; name: string },
  env: NodeJS.ProcessEnv,
): Promise<OperatorConfig> {
  const cm = await client.get<ConfigMapObject>(CONFIG_MAP, ref.namespace, ref.name);
  if (!cm) throw new ConfigError([`ConfigMap ${ref.namespace}/${ref.name} (KILN_CONFIG_MAP) does not exist`]);
  return loadConfig(env, undefined, configDocument(cm, ref));
}

const configDocument = (cm: ConfigMapObject, ref: { namespace: string; name: string }) => ({
  source: `ConfigMap ${ref.namespace}/${ref.name} key ${CONFIG_MAP_KEY}`,
  text: cm.data?.[CONFIG_MAP_KEY] ?? "",
});

export interface OperatorOptions {
  config: OperatorConfig;
  kubeConfig: KubeConfig;
  clock?: Clock;
  log?: Logger;
  resolveRevision?: RevisionResolver;
  /** Informer resync period; a safety net for missed edges, not the way work is found. */
  resyncMs?: number;
  /**
   * The ConfigMap `config` was read from: it is watched, and a change to the toolchain, limits or
   * defaults applies without a restart (a toolchain bump rebuilds and rolls every model).
   */
  configMap?: { namespace: string; name: string; env: NodeJS.ProcessEnv };
  /** Called when leadership is lost; by default the process exits so it restarts from clean caches. */
  onLostLeadership?: () => void;
}

export interface Operator {
  http: FastifyInstance;
  /** Stops campaigning, drains in-flight reconciles, releases the lease, stops watches. */
  stop(): Promise<void>;
  isLeader(): boolean;
}

/** Owners of `kind` referenced by an object, as queue keys. */
const ownerKeys = (obj: KubeObject, kind: string) =>
  (obj.metadata?.ownerReferences ?? [])
    .filter((r) => r.kind === kind)
    .map((r) => `${obj.metadata?.namespace}/${r.name}`);

export async function startOperator(opts: OperatorOptions): Promise<Operator> {
  const { config } = opts;
  const clock = opts.clock ?? realClock;
  const log = opts.log ?? componentLogger("operator");
  const client = new KubeClient(opts.kubeConfig);
  const managed = `${LABELS.managedBy}=${MANAGED_BY}`;
  const informer = <T extends KubeObject>(
    rt: ResourceType,
    selector?: string,
    transform?: CacheTransform<T>,
  ) =>
    new Informer<T>(client.listWatch<T>(rt, undefined, selector), {
      clock,
      resyncMs: opts.resyncMs ?? 10 * 60_000,
      transform,
      log: log.child({ informer: rt.kind }),
    });

  const models = informer<InferenceModel>(IM_RESOURCE);
  const builds = informer<EngineBuild>(EB_RESOURCE);
  const deployments = informer<V1Deployment & KubeObject>(DEPLOYMENT, managed);
  const services = informer<V1Service & KubeObject>(SERVICE, managed);
  const jobs = informer<V1Job & KubeObject>(JOB, managed, trimJob);
  const nodes = informer<V1Node & KubeObject>(NODE, undefined, trimNode);
  const configMaps = opts.configMap
    ? new Informer<ConfigMapObject>(
        client.listWatch<ConfigMapObject>(
          CONFIG_MAP,
          opts.configMap.namespace,
          undefined,
          `metadata.name=${opts.configMap.name}`,
        ),
        { clock, log: log.child({ informer: "ConfigMap" }) },
      )
    : undefined;
  const informers = [models, builds, deployments, services, jobs, nodes, ...(configMaps ? [configMaps] : [])];
  const ownerUids = (o: KubeObject) => (o.metadata?.ownerReferences ?? []).map((r) => r.uid);
  builds.addIndex(INDEX.owner, ownerUids);
  deployments.addIndex(INDEX.owner, ownerUids);

  const registry = new Registry();
  // Process and V8 metrics (RSS, heap used/total per space, GC pauses, event-loop lag): what the
  // chart's memory limit and --max-old-space-size are sized from.
  collectDefaultMetrics({ register: registry });
  const reconciles = new Counter({
    name: "kiln_reconcile_total",
    help: "Reconciles by controller and outcome",
    labelNames: ["controller", "outcome"],
    registers: [registry],
  });
  const durations = new Histogram({
    name: "kiln_reconcile_duration_seconds",
    help: "Reconcile duration",
    labelNames: ["controller"],
    registers: [registry],
  });
  const modelQueue = new WorkQueue({ clock });
  const buildQueue = new WorkQueue({ clock });
  new Gauge({
    name: "kiln_queue_depth",
    help: "Keys waiting in a work queue",
    labelNames: ["controller"],
    registers: [registry],
    collect() {
      this.set({ controller: "inferencemodel" }, modelQueue.len());
      this.set({ controller: "enginebuild" }, buildQueue.len());
    },
  });
  new Gauge({
    name: "kiln_engine_builds",
    help: "EngineBuilds by phase",
    labelNames: ["phase"],
    registers: [registry],
    collect() {
      for (const phase of EB_PHASES) {
        this.set({ phase }, builds.list().filter((b) => (b.status?.phase ?? "Pending") === phase).length);
      }
    },
  });

  // Watches map every change to the object whose reconcile cares about it.
  const enqueueModel = (o: KubeObject) => modelQueue.add(objectKey(o));
  models.on({ add: enqueueModel, update: (_, o) => enqueueModel(o), delete: enqueueModel });
  const buildChanged = (b: EngineBuild) => {
    buildQueue.add(objectKey(b));
    for (const k of ownerKeys(b, "InferenceModel")) modelQueue.add(k);
  };
  builds.on({ add: buildChanged, update: (_, b) => buildChanged(b), delete: buildChanged });
  const toModel = (o: KubeObject) => {
    for (const k of ownerKeys(o, "InferenceModel")) modelQueue.add(k);
  };
  deployments.on({ add: toModel, update: (_, o) => toModel(o), delete: toModel });
  services.on({ add: toModel, update: (_, o) => toModel(o), delete: toModel });
  const toBuild = (o: KubeObject) => {
    for (const k of ownerKeys(o, "EngineBuild")) buildQueue.add(k);
  };
  jobs.on({ add: toBuild, update: (_, o) => toBuild(o), delete: toBuild });
  // GPU capacity changes can unblock a pre-flight: look at every model again.
  const allModels = () => {
    for (const m of models.list()) enqueueModel(m);
  };
  // GPU capacity or labels (GPU feature discovery labels a node after it joins) can unblock a
  // pre-flight or bring a product into the cluster: look at every model again.
  nodes.on({
    add: allModels,
    delete: allModels,
    update: (before, after) => {
      const inventory = (n: V1Node) => JSON.stringify([n.metadata?.labels, n.status?.allocatable]);
      if (inventory(before) !== inventory(after)) allModels();
    },
  });
  const allBuilds = () => {
    for (const b of builds.list()) buildQueue.add(objectKey(b));
  };
  if (configMaps && opts.configMap) {
    const ref = opts.configMap;
    const reload = (cm: ConfigMapObject) => {
      let next: OperatorConfig;
      try {
        next = loadConfig(ref.env, undefined, configDocument(cm, ref));
      } catch (err) {
        // Keep running on the last good configuration; the error names every bad field.
        log.error({ err }, "configuration change rejected");
        return;
      }
      const previousToolchain = config.toolchain.version;
      const { changed, needsRestart } = applyConfigChange(config, next);
      if (needsRestart.length)
        log.warn({ sections: needsRestart }, "configuration change needs an operator restart to apply");
      if (!changed.length) return;
      log.info(
        { sections: changed, toolchain: { from: previousToolchain, to: config.toolchain.version } },
        "configuration changed",
      );
      // New toolchain => new engine keys for every model; new limits => queued builds may start.
      allModels();
      allBuilds();
    };
    configMaps.on({ update: (_, cm) => reload(cm) });
  }

  const gpusPerNode = () => {
    const out: Partial<Record<GpuProductName, number>> = {};
    for (const n of nodes.list()) {
      const count = Number(n.status?.allocatable?.[config.defaults.gpuResource] ?? 0);
      for (const product of GPU_PRODUCT_NAMES) {
        const selector = config.defaults.gpuNodeSelectors[product];
        if (!selector) continue;
        if (Object.entries(selector).every(([k, v]) => n.metadata?.labels?.[k] === v)) {
          out[product] = Math.max(out[product] ?? 0, count);
        }
      }
    }
    return out;
  };

  const events = new EventRecorder(client, clock, log.child({ component: "events" }));
  const modelCtx: ModelContext = {
    client,
    models,
    builds,
    deployments,
    services,
    resolveRevision: opts.resolveRevision ?? defaultRevisionResolver(config),
    gpusPerNode,
    events,
    config,
    clock,
    log: log.child({ controller: "inferencemodel" }),
  };
  const admission = new BuildAdmission();
  const buildCtx = {
    client,
    builds,
    jobs,
    store: openObjectStore(config.objectStore),
    events,
    config,
    clock,
    log: log.child({ controller: "enginebuild" }),
    wakeQueued: (which: (b: EngineBuild) => boolean) => {
      for (const b of builds.list())
        if (b.status?.phase === "Queued" && which(b)) buildQueue.add(objectKey(b));
    },
  };

  const started = Promise.all(informers.map((i) => i.start()));
  let synced = false;
  void started.then(() => {
    synced = true;
  });

  const http = Fastify({ logger: false });
  http.get("/healthz", async () => ({ ok: true }));
  http.get("/readyz", async (_req, reply) =>
    synced ? { ok: true } : reply.code(503).send({ ok: false, reason: "caches not synced" }),
  );
  http.get("/metrics", async (_req, reply) =>
    reply.type(registry.contentType).send(await registry.metrics()),
  );
  await http.listen({ port: config.http.port, host: "0.0.0.0" });

  const observe = (controller: string) => (_key: string, outcome: "success" | "error", seconds: number) => {
    reconciles.inc({ controller, outcome });
    durations.observe({ controller }, seconds);
  };
  const workers: Promise<void>[] = [];
  const lease = config.leaderElection;
  const elector = new LeaderElector(client, {
    namespace: lease.namespace,
    name: lease.name,
    identity: lease.identity,
    leaseDurationMs: lease.leaseDurationSeconds * 1000,
    renewDeadlineMs: lease.renewDeadlineSeconds * 1000,
    retryPeriodMs: lease.retryPeriodSeconds * 1000,
    clock,
    log: log.child({ component: "leader" }),
  });
  elector.run({
    onStarted: () => {
      // Only the leader reconciles; followers keep warm caches so a takeover is quick.
      void started.then(() => {
        const model: Reconciler = (key) => reconcileModel(modelCtx, key);
        const build: Reconciler = (key) => reconcileBuild(buildCtx, admission, key);
        workers.push(
          runWorkers(modelQueue, config.reconcileConcurrency, model, modelCtx.log, observe("inferencemodel")),
        );
        workers.push(
          runWorkers(buildQueue, config.reconcileConcurrency, build, buildCtx.log, observe("enginebuild")),
        );
        allModels();
        allBuilds();
      });
    },
    onStopped:
      opts.onLostLeadership ??
      (() => {
        log.fatal("leadership lost; exiting so a fresh process starts from clean caches");
        process.exit(1);
      }),
  });

  return {
    http,
    isLeader: () => elector.isLeader(),
    async stop() {
      modelQueue.shutDown();
      buildQueue.shutDown();
      await Promise.all(workers);
      await elector.release();
      for (const i of informers) i.stop();
      await http.close();
    },
  };
}

async function main(): Promise<void> {
  const log = componentLogger("operator");
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromDefault();
  let config: OperatorConfig;
  let configMap: OperatorOptions["configMap"];
  try {
    const ref = configMapRef();
    configMap = ref ? { ...ref, env: process.env } : undefined;
    config = ref ? await configFromConfigMap(new KubeClient(kubeConfig), ref, process.env) : loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      log.fatal(err.message);
      process.exit(2);
    }
    throw err;
  }
  if (!process.env.POD_NAME)
    config.leaderElection.identity = `${config.leaderElection.identity}-${randomUUID().slice(0, 8)}`;
  const operator = await startOperator({ config, kubeConfig, log, configMap });
  log.info({ toolchain: config.toolchain.version, store: config.objectStore.uri }, "kiln operator started");
  const shutdown = async (signal: string) => {
    log.info({ signal }, "shutting down");
    await operator.stop();
    process.exit(0);
  };
  process.once("SIGTERM", () => void shutdown("SIGTERM"));
  process.once("SIGINT", () => void shutdown("SIGINT"));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main().catch((err: unknown) => {
    componentLogger("operator").fatal({ err }, "operator failed");
    process.exit(1);
  });
}
