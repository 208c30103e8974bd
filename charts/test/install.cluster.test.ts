// The chart installed into the real control plane: every object is created; the operator, run with
// the chart's ServiceAccount token, elects itself, builds and serves a model (RBAC is sufficient);
// `kubectl auth can-i` shows what that account cannot do (RBAC is minimal); `helm upgrade` of the
// toolchain rebuilds and re-rolls the model; `helm uninstall` leaves CRDs, models and engines.
import { randomBytes } from "node:crypto";
import { createWriteStream } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { V1Deployment, V1Job } from "@kubernetes/client-node";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseAllDocuments, parse as parseYaml, stringify } from "yaml";
import { openObjectStore } from "../../lib/object-store.js";
import type { EngineBuildSpec } from "../../operator/src/api/enginebuild.js";
import type { EngineBuild, InferenceModel } from "../../operator/src/api/types.js";
import { CONFIG_MAP_KEY } from "../../operator/src/config.js";
import { KubeClient, type KubeObject } from "../../operator/src/controller/kube.js";
import { configFromConfigMap, type Operator, startOperator } from "../../operator/src/main.js";
import { testCluster, testS3 } from "../../test/cluster/env.js";
import { publishStandInEngine } from "../../test/fixtures/stand-in-engine.js";
import { CHART_DIR, Helm, kubectl, tokenKubeConfig, Watched } from "./helm.js";

type Job = V1Job & KubeObject;
type Deployment = V1Deployment & KubeObject;
interface Lease extends KubeObject {
  spec?: { holderIdentity?: string };
}

const s3 = testS3();
// The operator's S3 client takes the default AWS credential chain: in its pod these variables come
// from the objectStore.credentialsSecret Secret the chart mounts.
process.env.AWS_ACCESS_KEY_ID = s3.accessKeyId;
process.env.AWS_SECRET_ACCESS_KEY = s3.secretAccessKey;

const id = randomBytes(3).toString("hex");
const release = `kiln-${id}`;
const ns = `kiln-system-${id}`;
const modelNs = `models-${id}`;
const sa = `system:serviceaccount:${ns}:${release}`;
const storeUri = `s3://${s3.bucket}/helm-${id}`;
const store = openObjectStore({ uri: storeUri, endpoint: s3.endpoint, region: s3.region });
const values = [
  "toolchain.version=tc-1",
  `objectStore.uri=${storeUri}`,
  `objectStore.endpoint=${s3.endpoint}`,
  `objectStore.region=${s3.region}`,
  "objectStore.credentialsSecret=kiln-store",
  // Short lease timings and retries: the test waits on them.
  "leaderElection.leaseDurationSeconds=4",
  "leaderElection.renewDeadlineSeconds=3",
  "leaderElection.retryPeriodSeconds=1",
  "limits.buildRetryBaseSeconds=1",
];
const set = (vals: string[]) => vals.flatMap((v) => ["--set", v]);

let helm: Helm;
let operator: Operator | undefined;
const operatorLog: string[] = [];
const watches: Watched<KubeObject>[] = [];
const jobsSeen: Job[] = [];
let models: Watched<InferenceModel>;
let builds: Watched<EngineBuild>;

async function mustKubectl(...args: string[]): Promise<string> {
  const r = await kubectl(args);
  if (r.code !== 0) throw new Error(`kubectl ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

async function watch<T extends KubeObject>(path: string, onAdded?: (o: T) => Promise<void> | void) {
  const w = await Watched.start<T>(path, onAdded);
  watches.push(w as unknown as Watched<KubeObject>);
  return w;
}

/** The operator's configuration text as the API server holds it. */
async function liveConfig(): Promise<Record<string, Record<string, unknown>>> {
  const cm = JSON.parse(
    await mustKubectl("get", "configmap", `${release}-config`, "-n", ns, "-o", "json"),
  ) as { data: Record<string, string> };
  return parseYaml(cm.data[CONFIG_MAP_KEY] ?? "") as Record<string, Record<string, unknown>>;
}

async function operatorDeployment(): Promise<Deployment> {
  return JSON.parse(await mustKubectl("get", "deployment", release, "-n", ns, "-o", "json")) as Deployment;
}

const model = (name: string) => ({
  apiVersion: "kiln.dev/v1alpha1",
  kind: "InferenceModel",
  metadata: { name, namespace: modelNs },
  spec: {
    // A pinned revision: the Hub is not reachable from the test, and the engine key is per test run.
    model: { source: "hf://TinyLlama/TinyLlama-1.1B-Chat-v1.0", revision: `rev-${id}` },
    engine: { precision: "bf16" },
    gpu: { products: ["H100"] },
  },
});

const forbidden = () => operatorLog.filter((l) => /forbidden|\b403\b/i.test(l));

/** A wait that, when it fails, also names the calls the API server refused the operator. */
const explained = (wait: Promise<void>) =>
  wait.catch((err: Error) => {
    throw new Error(`${err.message}\noperator calls refused:\n${forbidden().slice(0, 3).join("\n")}`);
  });

beforeAll(async () => {
  helm = await Helm.create();
  for (const namespace of [ns, modelNs]) {
    await mustKubectl("create", "namespace", namespace);
    await mustKubectl(
      "create",
      "secret",
      "generic",
      "kiln-store",
      "-n",
      namespace,
      `--from-literal=AWS_ACCESS_KEY_ID=${s3.accessKeyId}`,
      `--from-literal=AWS_SECRET_ACCESS_KEY=${s3.secretAccessKey}`,
    );
  }
});

afterAll(async () => {
  await operator?.stop();
  for (const w of watches) w.stop();
  await helm.run("uninstall", release, "-n", ns);
  await kubectl(["delete", "namespace", ns, modelNs, "--wait=false"]);
  await helm.dispose();
});

describe("the chart in the test cluster", () => {
  it("helm install creates every object of the chart", async () => {
    // --take-ownership: the CRDs may already exist, applied from crds/ by other tests (or by a
    // user before the chart existed); the release adopts them instead of failing.
    await helm.ok("install", release, CHART_DIR, "-n", ns, "--take-ownership", ...set(values));
    const manifest = await helm.ok("get", "manifest", release, "-n", ns);
    const rendered = parseAllDocuments(manifest)
      .map((d) => d.toJSON() as KubeObject | null)
      .filter((o): o is KubeObject => o !== null)
      .map((o) => `${o.kind}/${o.metadata?.name}`)
      .sort();
    expect(rendered).toHaveLength(11);
    const got = JSON.parse(
      (await kubectl(["get", "-n", ns, "-f", "-", "-o", "json"], { input: manifest })).stdout,
    ) as {
      items: KubeObject[];
    };
    expect(got.items.map((o) => `${o.kind}/${o.metadata?.name}`).sort()).toEqual(rendered);
    const crd = got.items.find((o) => o.kind === "CustomResourceDefinition");
    expect(crd?.metadata?.annotations?.["helm.sh/resource-policy"]).toBe("keep");
    // Served once Established: only then can models be applied and watched.
    await mustKubectl(
      "wait",
      "--for=condition=Established",
      "--timeout=30s",
      "crd/inferencemodels.kiln.dev",
      "crd/enginebuilds.kiln.dev",
    );
  });

  it("the operator, with the chart's ServiceAccount token, leads and takes a model to Ready", async () => {
    // The Deployment's environment, as the pod would get it; the HTTP port is the test's only
    // change (0: any free port, several test operators share this host).
    const container = (await operatorDeployment()).spec?.template.spec?.containers[0];
    const identity = `kiln-operator-${id}`;
    const env: Record<string, string> = { POD_NAME: identity, KILN_HTTP_PORT: "0" };
    for (const e of container?.env ?? []) if (e.value !== undefined) env[e.name] = e.value;
    const [cmNamespace = "", cmName = ""] = (env.KILN_CONFIG_MAP ?? "").split("/");

    const token = (await mustKubectl("create", "token", release, "-n", ns, "--duration", "1h")).trim();
    const kubeConfig = tokenKubeConfig(token);
    const ref = { namespace: cmNamespace, name: cmName };
    const config = await configFromConfigMap(new KubeClient(kubeConfig), ref, env);
    // Kept for the forbidden-call check, and beside the cluster's component logs for a failed run.
    const logFile = createWriteStream(join(testCluster().logDir ?? tmpdir(), `${release}-operator.log`));
    const log = pino(
      { level: "debug" },
      {
        write: (line: string) => {
          operatorLog.push(line);
          logFile.write(line);
        },
      },
    );

    const leases = await watch<Lease>(`/apis/coordination.k8s.io/v1/namespaces/${ns}/leases`);
    models = await watch<InferenceModel>(`/apis/kiln.dev/v1alpha1/namespaces/${modelNs}/inferencemodels`);
    builds = await watch<EngineBuild>(`/apis/kiln.dev/v1alpha1/namespaces/${modelNs}/enginebuilds`);
    // Plays the build Job's container for each Job the operator creates.
    await watch<Job>(`/apis/batch/v1/namespaces/${modelNs}/jobs`, (job) => {
      if (jobsSeen.some((j) => j.metadata?.uid === job.metadata?.uid)) return;
      jobsSeen.push(job);
      const spec = job.spec?.template.spec?.containers[0]?.env?.find((e) => e.name === "KILN_BUILD_SPEC");
      return publishStandInEngine(store, JSON.parse(spec?.value ?? "{}") as EngineBuildSpec);
    });

    operator = await startOperator({
      config,
      kubeConfig,
      log,
      configMap: { ...ref, env },
      onLostLeadership: () => log.error("lost leadership"),
    });
    await leases.until((ls) => ls.some((l) => l.spec?.holderIdentity === identity), {
      timeoutMs: 30_000,
      describe: `Lease ${config.leaderElection.name} held by ${identity}`,
    });

    const applied = await kubectl(["apply", "-f", "-"], { input: stringify(model("tinyllama")) });
    expect(applied.stderr).toBe("");
    await explained(
      models.until((ms) => ms.some((m) => m.status?.phase === "Ready"), {
        timeoutMs: 90_000,
        describe: "InferenceModel tinyllama Ready",
      }),
    );
    expect(builds.list()).toHaveLength(1);
    expect(jobsSeen).toHaveLength(1);
    expect(jobsSeen[0]?.spec?.template.spec?.containers[0]?.image).toBe("ghcr.io/kiln-dev/kiln-builder:tc-1");
    const events = JSON.parse(await mustKubectl("get", "events", "-n", modelNs, "-o", "json")) as {
      items: { reason: string }[];
    };
    expect(events.items.map((e) => e.reason)).toContain("EngineBuildCreated");
    expect(forbidden()).toEqual([]);
  });

  // Every verb the operator uses, and neighbours it must not have.
  const allowed: [string, string[]][] = [
    ["watch inferencemodels.kiln.dev cluster-wide", ["watch", "inferencemodels.kiln.dev", "-A"]],
    [
      "update inferencemodels/status",
      ["update", "inferencemodels.kiln.dev", "--subresource=status", "-n", "x"],
    ],
    ["create enginebuilds", ["create", "enginebuilds.kiln.dev", "-n", "x"]],
    ["delete enginebuilds", ["delete", "enginebuilds.kiln.dev", "-n", "x"]],
    ["update enginebuilds/status", ["update", "enginebuilds.kiln.dev", "--subresource=status", "-n", "x"]],
    ["patch deployments (server-side apply)", ["patch", "deployments.apps", "-n", "x"]],
    ["create deployments (server-side apply of a new one)", ["create", "deployments.apps", "-n", "x"]],
    ["patch services (server-side apply)", ["patch", "services", "-n", "x"]],
    ["create services (server-side apply of a new one)", ["create", "services", "-n", "x"]],
    [
      "update enginebuilds (owner references of sharing models)",
      ["update", "enginebuilds.kiln.dev", "-n", "x"],
    ],
    [
      "update inferencemodels/finalizers (blockOwnerDeletion)",
      ["update", "inferencemodels.kiln.dev", "--subresource=finalizers", "-n", "x"],
    ],
    ["delete deployments", ["delete", "deployments.apps", "-n", "x"]],
    ["get jobs", ["get", "jobs.batch", "-n", "x"]],
    ["create jobs", ["create", "jobs.batch", "-n", "x"]],
    ["list pods", ["list", "pods", "-n", "x"]],
    ["watch nodes", ["watch", "nodes"]],
    ["create events", ["create", "events", "-n", "x"]],
    ["create leases in its namespace", ["create", "leases.coordination.k8s.io", "-n", "NS"]],
    ["update its own lease", ["update", "leases.coordination.k8s.io/kiln-operator", "-n", "NS"]],
    ["get its own ConfigMap", ["get", "configmaps/CM", "-n", "NS"]],
    ["watch its own ConfigMap", ["watch", "configmaps/CM", "-n", "NS"]],
  ];
  const denied: [string, string[]][] = [
    ["get secrets anywhere", ["get", "secrets", "-A"]],
    ["list secrets anywhere", ["list", "secrets", "-A"]],
    ["watch secrets anywhere", ["watch", "secrets", "-A"]],
    ["get the object-store Secret in its own namespace", ["get", "secrets/kiln-store", "-n", "NS"]],
    ["exec into pods", ["create", "pods", "--subresource=exec", "-n", "x"]],
    ["create pods", ["create", "pods", "-n", "x"]],
    ["delete pods", ["delete", "pods", "-n", "x"]],
    ["get pods by name (reads only by job-name list)", ["get", "pods", "-n", "x"]],
    ["patch nodes", ["patch", "nodes"]],
    ["update nodes", ["update", "nodes"]],
    ["delete nodes", ["delete", "nodes"]],
    ["create clusterroles", ["create", "clusterroles.rbac.authorization.k8s.io"]],
    ["bind clusterroles", ["bind", "clusterroles.rbac.authorization.k8s.io"]],
    ["escalate roles", ["escalate", "roles.rbac.authorization.k8s.io", "-n", "NS"]],
    ["delete CRDs", ["delete", "customresourcedefinitions.apiextensions.k8s.io"]],
    ["update CRDs", ["update", "customresourcedefinitions.apiextensions.k8s.io"]],
    ["create inferencemodels", ["create", "inferencemodels.kiln.dev", "-n", "x"]],
    ["update inferencemodel specs", ["update", "inferencemodels.kiln.dev", "-n", "x"]],
    ["delete inferencemodels", ["delete", "inferencemodels.kiln.dev", "-n", "x"]],
    ["delete jobs", ["delete", "jobs.batch", "-n", "x"]],
    ["update deployments (only server-side apply)", ["update", "deployments.apps", "-n", "x"]],
    ["delete services", ["delete", "services", "-n", "x"]],
    ["read other ConfigMaps in its namespace", ["get", "configmaps/other", "-n", "NS"]],
    ["list ConfigMaps anywhere", ["list", "configmaps", "-A"]],
    ["update another lease", ["update", "leases.coordination.k8s.io/other", "-n", "NS"]],
    ["create leases elsewhere", ["create", "leases.coordination.k8s.io", "-n", "x"]],
    ["request tokens for service accounts", ["create", "serviceaccounts", "--subresource=token", "-n", "NS"]],
    ["create namespaces", ["create", "namespaces"]],
    ["impersonate", ["impersonate", "users"]],
  ];
  const canI = async (args: string[]) => {
    const resolved = args.map((a) =>
      a.replace("NS", ns).replace("configmaps/CM", `configmaps/${release}-config`).replace(/^x$/, modelNs),
    );
    const r = await kubectl(["auth", "can-i", ...resolved, `--as=${sa}`]);
    return r.stdout.trim();
  };

  it.each(allowed)("the ServiceAccount may %s", async (_, args) => {
    expect(await canI(args)).toBe("yes");
  });

  it.each(denied)("the ServiceAccount may not %s", async (_, args) => {
    expect(await canI(args)).toBe("no");
  });

  it("helm upgrade --set toolchain.version rebuilds and re-rolls the model without restarting the operator", async () => {
    const before = await operatorDeployment();
    await helm.ok(
      "upgrade",
      release,
      CHART_DIR,
      "-n",
      ns,
      "--reuse-values",
      "--set",
      "toolchain.version=tc-2",
    );

    expect((await liveConfig()).toolchain).toEqual({
      version: "tc-2",
      builderImage: "ghcr.io/kiln-dev/kiln-builder:tc-2",
      runtimeImage: "ghcr.io/kiln-dev/kiln-runtime:tc-2",
    });
    // The operator applies the toolchain live from its watched ConfigMap: its pods are not rolled.
    const after = await operatorDeployment();
    expect(after.metadata?.generation).toBe(before.metadata?.generation);

    await explained(
      models.until(
        (ms) =>
          ms.some(
            (m) =>
              m.status?.phase === "Ready" &&
              m.status.targets?.every((t) => t.servingEngine?.toolchain === "tc-2") === true,
          ),
        { timeoutMs: 90_000, describe: "InferenceModel tinyllama serving a tc-2 engine" },
      ),
    );
    expect(jobsSeen.map((j) => j.spec?.template.spec?.containers[0]?.image)).toEqual([
      "ghcr.io/kiln-dev/kiln-builder:tc-1",
      "ghcr.io/kiln-dev/kiln-builder:tc-2",
    ]);
    const deployment = JSON.parse(await mustKubectl("get", "deployments", "-n", modelNs, "-o", "json")) as {
      items: Deployment[];
    };
    const runtimeImages = deployment.items.map((d) => d.spec?.template.spec?.containers[0]?.image);
    expect(runtimeImages).toEqual(["ghcr.io/kiln-dev/kiln-runtime:tc-2"]);
    expect(forbidden()).toEqual([]);
  });

  it("helm upgrade of a setting read at start rolls the operator's pods", async () => {
    const before = await operatorDeployment();
    await helm.ok(
      "upgrade",
      release,
      CHART_DIR,
      "-n",
      ns,
      "--reuse-values",
      "--set",
      "reconcileConcurrency=2",
    );
    const after = await operatorDeployment();
    expect(after.metadata?.generation).toBe((before.metadata?.generation ?? 0) + 1);
    expect(after.spec?.template.metadata?.annotations?.["checksum/startup-config"]).not.toBe(
      before.spec?.template.metadata?.annotations?.["checksum/startup-config"],
    );
  });

  it("helm uninstall leaves the CRDs, the models and the engines in object storage", async () => {
    // Uninstalling deletes the operator's pods; the in-process operator stops as they would.
    await operator?.stop();
    operator = undefined;
    const engines = await store.list("engines");
    expect(engines.length).toBeGreaterThanOrEqual(4);

    await helm.ok("uninstall", release, "-n", ns);
    for (const crd of ["inferencemodels.kiln.dev", "enginebuilds.kiln.dev"]) {
      expect((await kubectl(["get", "crd", crd])).code).toBe(0);
    }
    expect((await kubectl(["get", "inferencemodel", "tinyllama", "-n", modelNs])).code).toBe(0);
    expect(await store.list("engines")).toEqual(engines);
    expect((await kubectl(["get", "deployment", release, "-n", ns])).stderr).toMatch(/NotFound/);
    expect((await kubectl(["get", "clusterrole", release])).stderr).toMatch(/NotFound/);
  });
});
