// Operator scale benchmark: a real control plane with kwok simulating a GPU fleet, the operator as
// its own process (so its RSS is its own), a stand-in builder that writes each Job's engine to the
// real S3 server, and InferenceModels applied across namespaces. It measures apply -> EngineBuild
// and apply -> Job latency, the operator's reconcile duration p99 (its own histogram), the API
// requests it issues (the apiserver's own count, through a FlowSchema that matches only the
// operator's ServiceAccount), its peak RSS, and the time to converge after a toolchain bump under
// the build concurrency limit. Prints one table and writes bench/results/operator-latest.json and
// the "Operator at scale" section of bench/RESULTS.md.
//
//   npx tsx bench/operator/run.ts [--nodes 200] [--models 500] [--namespaces 20] [--build-limit 20]
//                                 [--timeout-minutes 30] [--reconcile-concurrency N] [--kcm-qps 100]
//                                 [--no-write]
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { createWriteStream } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import https from "node:https";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { KubeConfig, Watch } from "@kubernetes/client-node";
import { parse, parseAllDocuments } from "yaml";
import { openObjectStore } from "../../lib/object-store.js";
import type { EngineBuildSpec } from "../../operator/src/api/enginebuild.js";
import type { InferenceModel } from "../../operator/src/api/types.js";
import { KubeClient, type KubeObject, type ResourceType } from "../../operator/src/controller/kube.js";
import { IM_RESOURCE } from "../../operator/src/inferencemodel/reconcile.js";
import { startCluster } from "../../test/cluster/launcher.js";
import { freeLoopbackPorts } from "../../test/cluster/ports.js";
import { publishStandInEngine } from "../../test/fixtures/stand-in-engine.js";
import { gpuFleet, workload } from "./fleet.js";
import { cpuSeconds, GcTrace, MemorySampler } from "./memory.js";
import { histogramCount, histogramQuantile, shareAbove, sumSeries } from "./prom.js";

const { values: args } = parseArgs({
  options: {
    nodes: { type: "string", default: "200" },
    models: { type: "string", default: "500" },
    namespaces: { type: "string", default: "20" },
    "build-limit": { type: "string", default: "20" },
    "timeout-minutes": { type: "string", default: "30" },
    "reconcile-concurrency": { type: "string" },
    "kcm-qps": { type: "string", default: "100" },
    "no-write": { type: "boolean", default: false },
  },
});
const NODES = Number(args.nodes);
const MODELS = Number(args.models);
const NAMESPACES = Number(args.namespaces);
const BUILD_LIMIT = Number(args["build-limit"]);
const CONCURRENCY = args["reconcile-concurrency"];
// kwok pods are Ready the moment they are bound, so with kube-controller-manager's defaults (20
// QPS per controller, 5 ReplicaSet and 5 Deployment workers) a 500-Deployment rollout queues in
// its ReplicaSet controller (rest_client_rate_limiter_duration_seconds, workqueue_depth 346) and
// the bump measures that. A fleet this size runs its controller manager with more; 0 = defaults.
const KCM_QPS = Number(args["kcm-qps"]);
const KCM_ARGS = KCM_QPS
  ? [
      `--kube-api-qps=${KCM_QPS}`,
      `--kube-api-burst=${2 * KCM_QPS}`,
      "--concurrent-deployment-syncs=10",
      "--concurrent-replicaset-syncs=10",
    ]
  : [];
const deadline = Date.now() + Number(args["timeout-minutes"]) * 60_000;
const log = (line: string) => process.stderr.write(`[bench/operator] ${line}\n`);

const rt = (apiVersion: string, kind: string, plural: string, namespaced: boolean): ResourceType => ({
  apiVersion,
  kind,
  plural,
  namespaced,
});
const NS = rt("v1", "Namespace", "namespaces", false);
const SA = rt("v1", "ServiceAccount", "serviceaccounts", true);
const CM = rt("v1", "ConfigMap", "configmaps", true);
const POD = rt("v1", "Pod", "pods", true);
const CRB = rt("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", false);
const FLOW = rt("flowcontrol.apiserver.k8s.io/v1", "FlowSchema", "flowschemas", false);
const CRD = rt("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", false);
const OPERATOR_NS = "kiln-bench";
const FLOW_SCHEMA = "kiln-bench-operator";

const quantile = (xs: number[], q: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? (s[Math.min(s.length - 1, Math.ceil(q * s.length) - 1)] ?? Number.NaN) : Number.NaN;
};

async function until(describe: string, check: () => boolean | Promise<boolean>, intervalMs = 500) {
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${describe}: not reached before the benchmark's deadline`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

/** Runs `fn` over `items`, `width` at a time. */
async function pool<T>(items: T[], width: number, fn: (item: T) => Promise<void>) {
  let next = 0;
  await Promise.all(
    Array.from({ length: width }, async () => {
      while (next < items.length) await fn(items[next++] as T);
    }),
  );
}

async function main() {
  log(`starting a control plane with ${NODES} fake GPU nodes`);
  const cluster = await startCluster({
    gpuNodes: gpuFleet(NODES),
    timeoutMs: 300_000,
    log,
    controllerManagerArgs: KCM_ARGS,
  });
  let operator: ChildProcess | undefined;
  let stopped = false;
  const watches: AbortController[] = [];
  try {
    const kc = new KubeConfig();
    kc.loadFromFile(cluster.kubeconfigPath);
    const client = new KubeClient(kc);
    for (const file of ["inferencemodels.kiln.dev.yaml", "enginebuilds.kiln.dev.yaml"]) {
      const text = await readFile(new URL(`../../crds/${file}`, import.meta.url), "utf8");
      for (const doc of parseAllDocuments(text)) await client.apply(CRD, doc.toJSON() as KubeObject);
    }
    const operatorKubeconfig = await operatorIdentity(client, kc, cluster.runDir);
    const toolchain = (version: string, maxConcurrentBuilds: number) => ({
      "config.yaml": JSON.stringify({
        toolchain: {
          version,
          builderImage: `kiln/builder:${version}`,
          runtimeImage: `kiln/runtime:${version}`,
        },
        limits: { maxConcurrentBuilds },
      }),
    });
    // First apply: no build limit worth the name, so apply -> Job measures the operator alone.
    await client.create(CM, {
      apiVersion: "v1",
      kind: "ConfigMap",
      metadata: { name: "kiln-config", namespace: OPERATOR_NS },
      data: toolchain("tc-1", 1000),
    } as KubeObject);

    // The stand-in builder and the timeline, from watches across all namespaces.
    const s3 = cluster.s3;
    Object.assign(process.env, {
      AWS_ACCESS_KEY_ID: s3.accessKeyId,
      AWS_SECRET_ACCESS_KEY: s3.secretAccessKey,
    });
    const storeUri = `s3://${s3.bucket}/bench`;
    const store = openObjectStore({ uri: storeUri, endpoint: s3.endpoint, region: s3.region });
    const buildCreated = new Map<string, number>();
    const jobCreated = new Map<string, number>();
    const models = new Map<string, InferenceModel>();
    const referenced = new Map<string, number>();
    const watch = async <T extends KubeObject>(path: string, on: (type: string, o: T) => void) => {
      // A watch the apiserver ends (its timeout) is started again; the bench owns every abort.
      const start = async (): Promise<void> => {
        const c = await new Watch(kc).watch(path, {}, on, () => {
          if (!stopped) void start();
        });
        watches.push(c);
      };
      await start();
    };
    await watch<KubeObject>("/apis/kiln.dev/v1alpha1/enginebuilds", (type, eb) => {
      const key = `${eb.metadata?.namespace}/${eb.metadata?.name}`;
      if (type === "ADDED" && !buildCreated.has(key)) buildCreated.set(key, Date.now());
    });
    await watch<
      KubeObject & {
        spec?: { template?: { spec?: { containers?: { env?: { name: string; value?: string }[] }[] } } };
      }
    >("/apis/batch/v1/jobs", (type, job) => {
      if (type !== "ADDED") return;
      const owner = job.metadata?.ownerReferences?.find((r) => r.kind === "EngineBuild")?.name;
      const key = `${job.metadata?.namespace}/${owner}`;
      if (!jobCreated.has(key)) jobCreated.set(key, Date.now());
      const spec = JSON.parse(
        job.spec?.template?.spec?.containers?.[0]?.env?.find((v) => v.name === "KILN_BUILD_SPEC")?.value ??
          "{}",
      ) as EngineBuildSpec;
      void publishStandInEngine(store, spec).catch((err: Error) => log(`stand-in builder: ${err.message}`));
    });
    await watch<InferenceModel>("/apis/kiln.dev/v1alpha1/inferencemodels", (type, m) => {
      const key = `${m.metadata.namespace}/${m.metadata.name}`;
      if (type === "DELETED") return void models.delete(key);
      models.set(key, m);
      const build = m.status?.targets?.[0]?.desiredEngine?.build;
      const tag = `${key}@${build}`;
      if (build && !referenced.has(tag)) referenced.set(tag, Date.now());
    });

    // The operator, as its own process.
    const [httpPort] = await freeLoopbackPorts(1);
    const opLog = createWriteStream(join(cluster.logDir, "operator.log"));
    // Compiled as operator-image/Dockerfile does: RSS without tsx's in-process transpiler.
    const repo = new URL("../..", import.meta.url).pathname;
    log("compiling the operator (operator-image/tsconfig.json -> dist/)");
    execFileSync(
      process.execPath,
      ["node_modules/typescript/bin/tsc", "-p", "operator-image/tsconfig.json"],
      {
        cwd: repo,
        stdio: "inherit",
      },
    );
    // The V8 flags the chart gives the operator, so the bench measures what ships; --trace-gc logs
    // each mark-compact's heap after collection, the closest outside view of the live set.
    const nodeFlags = await chartNodeOptions();
    log(`operator node flags: ${nodeFlags.join(" ") || "(none)"}`);
    operator = spawn(process.execPath, [...nodeFlags, "--trace-gc", "dist/operator/src/main.js"], {
      cwd: repo,
      env: {
        ...process.env,
        KUBECONFIG: operatorKubeconfig,
        POD_NAME: "kiln-operator-bench",
        KILN_NAMESPACE: OPERATOR_NS,
        KILN_CONFIG_MAP: `${OPERATOR_NS}/kiln-config`,
        KILN_STORE_URI: storeUri,
        KILN_STORE_ENDPOINT: s3.endpoint,
        KILN_STORE_REGION: s3.region,
        KILN_HTTP_PORT: String(httpPort),
        KILN_BUILD_RETRY_BASE_SECONDS: "1",
        LOG_LEVEL: "info",
        ...(CONCURRENCY ? { KILN_RECONCILE_CONCURRENCY: CONCURRENCY } : {}),
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    const gc = new GcTrace();
    operator.stdout?.on("data", (chunk: Buffer) => gc.feed(chunk.toString("utf8")));
    operator.stdout?.pipe(opLog);
    operator.stderr?.pipe(opLog);
    const pid = operator.pid ?? 0;
    const metricsUrl = `http://127.0.0.1:${httpPort}/metrics`;
    const operatorMetrics = async () => (await fetch(metricsUrl)).text();
    await until(
      "operator /readyz",
      async () => (await fetch(`http://127.0.0.1:${httpPort}/readyz`).catch(() => undefined))?.ok === true,
    );
    const cpu0 = await cpuSeconds(pid);
    const memory = new MemorySampler(pid, operatorMetrics);
    const idle = await memory.sample();
    memory.start();
    const apiserverRequests = async () =>
      sumSeries(await apiserverMetrics(kc), "apiserver_flowcontrol_dispatched_requests_total", {
        flow_schema: FLOW_SCHEMA,
      });

    // Phase 1: apply every model.
    const plan = workload(MODELS, NAMESPACES);
    for (const ns of new Set(plan.map((p) => p.namespace))) {
      await client.create(NS, { apiVersion: "v1", kind: "Namespace", metadata: { name: ns } });
    }
    const requests0 = await apiserverRequests();
    const applied = new Map<string, number>();
    const t0 = Date.now();
    log(`applying ${plan.length} InferenceModels across ${NAMESPACES} namespaces`);
    await pool(plan, 16, async (p) => {
      await client.create(IM_RESOURCE, {
        apiVersion: "kiln.dev/v1alpha1",
        kind: "InferenceModel",
        metadata: { name: p.name, namespace: p.namespace },
        spec: p.spec,
      } as InferenceModel);
      applied.set(`${p.namespace}/${p.name}`, Date.now());
    });
    const ready = (toolchainVersion: string) =>
      [...models.values()].filter(
        (m) =>
          m.status?.phase === "Ready" &&
          m.status.observedGeneration === m.metadata.generation &&
          m.status.targets?.every((t) => t.servingEngine?.toolchain === toolchainVersion),
      ).length;
    await until(`all ${plan.length} models Ready on tc-1`, () => ready("tc-1") === plan.length, 1000);
    const applySeconds = (Date.now() - t0) / 1000;
    const requests1 = await apiserverRequests();
    const toBuild: number[] = [];
    const toJob: number[] = [];
    for (const [key, at] of applied) {
      const build = models.get(key)?.status?.targets?.[0]?.desiredEngine?.build;
      const ns = key.split("/")[0];
      const ref = referenced.get(`${key}@${build}`);
      if (ref !== undefined) toBuild.push(Math.max(ref, buildCreated.get(`${ns}/${build}`) ?? ref) - at);
      const job = jobCreated.get(`${ns}/${build}`);
      // Models whose engine another namespace already built are cache hits: no Job to time.
      if (job !== undefined && job >= at) toJob.push(job - at);
    }
    const jobsPhase1 = jobCreated.size;

    // Phase 2: a toolchain bump under the build concurrency limit.
    log(`toolchain bump tc-1 -> tc-2 with maxConcurrentBuilds=${BUILD_LIMIT}`);
    const cm = (await client.get<KubeObject & { data?: Record<string, string> }>(
      CM,
      OPERATOR_NS,
      "kiln-config",
    )) as KubeObject;
    const t1 = Date.now();
    await client.replace(CM, { ...cm, data: toolchain("tc-2", BUILD_LIMIT) } as KubeObject);
    // Progress, so a slow bump shows where it waits: models done, pods the scheduler has not placed.
    const progress = setInterval(() => {
      void client
        .list(POD, undefined, undefined, "status.phase=Pending")
        .then(({ items }) =>
          log(
            `bump +${Math.round((Date.now() - t1) / 1000)} s: ${ready("tc-2")}/${plan.length} Ready on tc-2, ${items.length} pods Pending`,
          ),
        )
        .catch(() => undefined);
    }, 30_000);
    // A bump the deadline cuts short still reports how far it got, with phase 1's numbers.
    const converged = await until(
      `all ${plan.length} models Ready on tc-2`,
      () => ready("tc-2") === plan.length,
      1000,
    )
      .then(() => true)
      .catch((err: Error) => {
        log(err.message);
        return false;
      });
    clearInterval(progress);
    const bumpSeconds = (Date.now() - t1) / 1000;
    const bumpConverged = ready("tc-2");
    const requests2 = await apiserverRequests();
    memory.stop();

    const text = await operatorMetrics();
    const apiserverText = await apiserverMetrics(kc);
    const reconcileStats = (controller: string) => ({
      count: histogramCount(text, "kiln_reconcile_duration_seconds", { controller }),
      over1s: shareAbove(text, "kiln_reconcile_duration_seconds", { controller }, 1),
    });
    // The apiserver's own time for the operator's most frequent writes (only the operator makes
    // them: status PUTs of models, server-side applies of Deployments, EngineBuild creates).
    const writeP99 = (verb: string, resource: string, subresource = "") =>
      histogramQuantile(
        apiserverText,
        "apiserver_request_duration_seconds",
        { verb, resource, subresource },
        0.99,
      );
    const result = {
      commit: execFileSync("git", ["rev-parse", "--short", "HEAD"]).toString().trim(),
      date: new Date().toISOString().slice(0, 16),
      machine: `${(await readFile("/proc/cpuinfo", "utf8")).match(/model name\s*:\s*(.*)/)?.[1] ?? "unknown"}, ${
        (await readFile("/proc/cpuinfo", "utf8")).match(/^processor/gm)?.length ?? "?"
      } cores`,
      nodes: NODES,
      models: plan.length,
      namespaces: NAMESPACES,
      distinctEngines: new Set(plan.map((p) => JSON.stringify(p.spec))).size,
      engineBuilds: buildCreated.size,
      jobsPhase1,
      applyToBuildMs: { p50: quantile(toBuild, 0.5), p99: quantile(toBuild, 0.99), n: toBuild.length },
      applyToJobMs: { p50: quantile(toJob, 0.5), p99: quantile(toJob, 0.99), n: toJob.length },
      allReadySeconds: applySeconds,
      reconcileP99Seconds: {
        inferencemodel: histogramQuantile(
          text,
          "kiln_reconcile_duration_seconds",
          { controller: "inferencemodel" },
          0.99,
        ),
        enginebuild: histogramQuantile(
          text,
          "kiln_reconcile_duration_seconds",
          { controller: "enginebuild" },
          0.99,
        ),
      },
      reconciles: {
        inferencemodel: reconcileStats("inferencemodel"),
        enginebuild: reconcileStats("enginebuild"),
      },
      apiserverWriteP99Seconds: {
        modelStatusPut: writeP99("PUT", "inferencemodels", "status"),
        deploymentApply: writeP99("APPLY", "deployments"),
        engineBuildCreate: writeP99("POST", "enginebuilds"),
      },
      apiRequestsPerSecond: {
        apply: (requests1 - requests0) / applySeconds,
        bump: (requests2 - requests1) / bumpSeconds,
      },
      reconcileConcurrency: Number(CONCURRENCY ?? 4),
      controllerManagerArgs: KCM_ARGS.join(" "),
      operatorNodeFlags: nodeFlags.join(" "),
      memoryMb: {
        idleRss: idle.rssMb,
        idleHeapUsed: idle.heapUsedMb,
        peakRss: memory.peak.rssMb,
        peakHeapUsed: memory.peak.heapUsedMb,
        peakHeapTotal: memory.peak.heapTotalMb,
        peakAfterMarkCompact: gc.peakAfterMarkCompactMb,
        endHeapUsed: (await memory.sample()).heapUsedMb,
      },
      peakEventLoopLagMs: memory.peak.eventLoopLagMaxMs,
      operatorCpuSeconds: (await cpuSeconds(pid)) - cpu0,
      loadAverage: (await readFile("/proc/loadavg", "utf8")).split(" ").slice(0, 3).join(" "),
      bump: {
        buildLimit: BUILD_LIMIT,
        convergeSeconds: bumpSeconds,
        converged,
        modelsOnNewToolchain: bumpConverged,
        jobs: jobCreated.size - jobsPhase1,
      },
    };
    report(result);
    if (!args["no-write"]) await writeResults(result);
  } finally {
    stopped = true;
    for (const w of watches) w.abort();
    if (operator && operator.exitCode === null) {
      const exited = new Promise((resolve) => operator?.once("exit", resolve));
      operator.kill("SIGTERM");
      await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 10_000))]);
      if (operator.exitCode === null) operator.kill("SIGKILL");
    }
    await cluster.stop();
  }
}

/**
 * The operator's own identity: a ServiceAccount bound to cluster-admin (the bench measures load,
 * the chart's RBAC is proven elsewhere) and a FlowSchema matching only it, so the apiserver's
 * apiserver_flowcontrol_dispatched_requests_total counts exactly the operator's requests.
 */
async function operatorIdentity(client: KubeClient, kc: KubeConfig, runDir: string): Promise<string> {
  await client.create(NS, { apiVersion: "v1", kind: "Namespace", metadata: { name: OPERATOR_NS } });
  await client.create(SA, {
    apiVersion: "v1",
    kind: "ServiceAccount",
    metadata: { name: "kiln-operator", namespace: OPERATOR_NS },
  });
  await client.create(CRB, {
    apiVersion: "rbac.authorization.k8s.io/v1",
    kind: "ClusterRoleBinding",
    metadata: { name: "kiln-bench-operator" },
    roleRef: { apiGroup: "rbac.authorization.k8s.io", kind: "ClusterRole", name: "cluster-admin" },
    subjects: [{ kind: "ServiceAccount", name: "kiln-operator", namespace: OPERATOR_NS }],
  } as KubeObject);
  await client.create(FLOW, {
    apiVersion: "flowcontrol.apiserver.k8s.io/v1",
    kind: "FlowSchema",
    metadata: { name: FLOW_SCHEMA },
    spec: {
      priorityLevelConfiguration: { name: "workload-high" },
      matchingPrecedence: 100,
      distinguisherMethod: { type: "ByUser" },
      rules: [
        {
          subjects: [
            { kind: "ServiceAccount", serviceAccount: { name: "kiln-operator", namespace: OPERATOR_NS } },
          ],
          resourceRules: [
            { verbs: ["*"], apiGroups: ["*"], resources: ["*"], namespaces: ["*"], clusterScope: true },
          ],
          nonResourceRules: [{ verbs: ["*"], nonResourceURLs: ["*"] }],
        },
      ],
    },
  } as KubeObject);
  const token = await client.request<{ status: { token: string } }>(
    "POST",
    `/api/v1/namespaces/${OPERATOR_NS}/serviceaccounts/kiln-operator/token`,
    { apiVersion: "authentication.k8s.io/v1", kind: "TokenRequest", spec: { expirationSeconds: 24 * 3600 } },
  );
  const cluster = kc.getCurrentCluster();
  const path = join(runDir, "operator.kubeconfig");
  const operatorKc = new KubeConfig();
  operatorKc.loadFromOptions({
    clusters: [
      { name: "bench", server: cluster?.server ?? "", caData: cluster?.caData, caFile: cluster?.caFile },
    ],
    users: [{ name: "kiln-operator", token: token.status.token }],
    contexts: [{ name: "bench", cluster: "bench", user: "kiln-operator" }],
    currentContext: "bench",
  });
  await writeFile(path, operatorKc.exportConfig(), { mode: 0o600 });
  return path;
}

/** The chart's `nodeOptions` (the operator's NODE_OPTIONS), as node command-line flags. */
async function chartNodeOptions(): Promise<string[]> {
  const values = parse(await readFile(new URL("../../charts/kiln/values.yaml", import.meta.url), "utf8")) as {
    nodeOptions?: string;
  };
  return (values.nodeOptions ?? "").split(/\s+/).filter(Boolean);
}

/** The apiserver's own /metrics text, read as the cluster admin. */
async function apiserverMetrics(kc: KubeConfig): Promise<string> {
  const opts: https.RequestOptions = { method: "GET" };
  await kc.applyToHTTPSOptions(opts);
  return new Promise((resolve, reject) => {
    const req = https.request(new URL(`${kc.getCurrentCluster()?.server}/metrics`), opts, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end();
  });
}

type Result = Record<string, unknown> & {
  applyToBuildMs: { p50: number; p99: number; n: number };
  applyToJobMs: { p50: number; p99: number; n: number };
  reconcileP99Seconds: { inferencemodel: number; enginebuild: number };
  reconciles: Record<"inferencemodel" | "enginebuild", { count: number; over1s: number }>;
  apiserverWriteP99Seconds: { modelStatusPut: number; deploymentApply: number; engineBuildCreate: number };
  peakEventLoopLagMs: number;
  operatorCpuSeconds: number;
  apiRequestsPerSecond: { apply: number; bump: number };
  memoryMb: {
    idleRss: number;
    idleHeapUsed: number;
    peakRss: number;
    peakHeapUsed: number;
    peakHeapTotal: number;
    peakAfterMarkCompact: number;
    endHeapUsed: number;
  };
  bump: {
    buildLimit: number;
    convergeSeconds: number;
    converged: boolean;
    modelsOnNewToolchain: number;
    jobs: number;
  };
};

function rows(r: Result): [string, string][] {
  const ms = (x: number) => `${Math.round(x)} ms`;
  const mb = (x: number) => `${Math.round(x)} MB`;
  const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
  return [
    [
      "fleet",
      `${r.nodes} GPU nodes, ${r.models} InferenceModels in ${r.namespaces} namespaces (${r.distinctEngines} distinct specs, ${r.engineBuilds} EngineBuilds, ${r.jobsPhase1} build Jobs)`,
    ],
    [
      "apply -> EngineBuild p50 / p99",
      `${ms(r.applyToBuildMs.p50)} / ${ms(r.applyToBuildMs.p99)} (n=${r.applyToBuildMs.n})`,
    ],
    [
      "apply -> Job p50 / p99",
      `${ms(r.applyToJobMs.p50)} / ${ms(r.applyToJobMs.p99)} (n=${r.applyToJobMs.n}; cache hits build no Job)`,
    ],
    ["all models Ready after apply", `${(r.allReadySeconds as number).toFixed(1)} s`],
    [
      `reconcile p99 (InferenceModel / EngineBuild), ${r.reconcileConcurrency} workers each`,
      `<= ${r.reconcileP99Seconds.inferencemodel} s / <= ${r.reconcileP99Seconds.enginebuild} s (histogram bucket bound)`,
    ],
    [
      "reconciles over 1 s (InferenceModel / EngineBuild)",
      `${pct(r.reconciles.inferencemodel.over1s)} of ${r.reconciles.inferencemodel.count} / ${pct(r.reconciles.enginebuild.over1s)} of ${r.reconciles.enginebuild.count}`,
    ],
    [
      "apiserver p99 of the operator's writes: model status PUT / Deployment apply / EngineBuild create",
      `<= ${r.apiserverWriteP99Seconds.modelStatusPut} s / <= ${r.apiserverWriteP99Seconds.deploymentApply} s / <= ${r.apiserverWriteP99Seconds.engineBuildCreate} s`,
    ],
    [
      "operator CPU (apply + bump) / event loop, longest stall",
      `${r.operatorCpuSeconds.toFixed(0)} s / ${Math.round(r.peakEventLoopLagMs)} ms (load average at end ${r.loadAverage})`,
    ],
    [
      "operator API requests/s (apply / bump)",
      `${r.apiRequestsPerSecond.apply.toFixed(1)} / ${r.apiRequestsPerSecond.bump.toFixed(1)}`,
    ],
    [
      "operator memory: RSS idle / peak",
      `${mb(r.memoryMb.idleRss)} / ${mb(r.memoryMb.peakRss)} (node flags: ${r.operatorNodeFlags || "none"})`,
    ],
    [
      "operator V8 heap used: idle / peak / at end",
      `${mb(r.memoryMb.idleHeapUsed)} / ${mb(r.memoryMb.peakHeapUsed)} / ${mb(r.memoryMb.endHeapUsed)} (heap total peak ${mb(r.memoryMb.peakHeapTotal)})`,
    ],
    ["operator heap after mark-compact, peak (live set bound)", mb(r.memoryMb.peakAfterMarkCompact)],
    [
      `toolchain bump, ${r.bump.buildLimit} builds at a time`,
      r.bump.converged
        ? `${r.bump.convergeSeconds.toFixed(1)} s to converge (${r.bump.jobs} build Jobs)`
        : `not converged: ${r.bump.modelsOnNewToolchain}/${r.models} models Ready on the new toolchain after ${r.bump.convergeSeconds.toFixed(1)} s (${r.bump.jobs} build Jobs)`,
    ],
  ];
}

function table(r: Result): string {
  return ["| measure | value |", "|---|---|", ...rows(r).map(([k, v]) => `| ${k} | ${v} |`)].join("\n");
}

function report(r: Result) {
  process.stdout.write(`\n${table(r)}\n\n${JSON.stringify(r)}\n`);
}

async function writeResults(r: Result) {
  const root = new URL("../", import.meta.url);
  await writeFile(new URL("results/operator-latest.json", root), `${JSON.stringify(r, null, 2)}\n`);
  const commit = execFileSync("git", ["rev-parse", "--short", "HEAD"]).toString().trim();
  const section = [
    "## Operator at scale",
    "",
    `\`npx tsx bench/operator/run.ts --nodes ${r.nodes} --models ${r.models} --namespaces ${r.namespaces} --build-limit ${r.bump.buildLimit}\`` +
      ` on ${r.machine}, commit ${commit}, ${new Date().toISOString().slice(0, 16)} UTC. kwok fake nodes, real kube-apiserver/etcd/scheduler/controller-manager, versitygw S3, operator as its own process.`,
    "",
    table(r),
    "",
  ].join("\n");
  const file = new URL("RESULTS.md", root);
  const text = await readFile(file, "utf8");
  const start = text.indexOf("## Operator at scale");
  let next = start < 0 ? -1 : text.indexOf("\n## ", start + 1);
  if (next >= 0) next += 1;
  const updated =
    start < 0
      ? `${text.trimEnd()}\n\n${section}`
      : `${text.slice(0, start)}${section}${next >= 0 ? `\n${text.slice(next)}` : ""}`;
  await writeFile(file, updated);
}

main().catch((err: unknown) => {
  log(`failed: ${(err as Error).stack ?? err}`);
  process.exit(1);
});
