// Faults the operator must ride out against the shared test cluster: the object store going away
// mid-build, a GPU node removed under a running build, and a user editing an InferenceModel while
// the operator reconciles it. Each test stops what it starts; the cluster itself is left as found.
import type { V1Node, V1Pod } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { EngineBuild, InferenceModel } from "../../operator/src/api/types.js";
import { ApiError, type KubeObject, type ResourceType } from "../../operator/src/controller/kube.js";
import { IM_RESOURCE } from "../../operator/src/inferencemodel/reconcile.js";
import {
  client,
  createNamespace,
  deleteNamespace,
  FakeBuilder,
  inferenceModel,
  installCrds,
  kubectl,
  operatorEnv,
  paths,
  startTestOperator,
  storeOf,
  type TestOperator,
  uniqueName,
  Watched,
} from "../../operator/test/cluster-harness.js";
import { testS3 } from "../cluster/env.js";
import { gpuNodeManifest } from "../cluster/gpu-nodes.js";
import { TcpGate } from "./tcp-gate.js";

const NODE: ResourceType = { apiVersion: "v1", kind: "Node", plural: "nodes", namespaced: false };
const namespaces: string[] = [];

/**
 * Waits until a watch on `path` stays open: right after the CRDs are (re)applied the apiserver's
 * watch cache re-initialises and ends new watches with 429 for a moment, which the recording
 * watches of these tests would take for a failure.
 */
async function untilWatchable(path: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const w = await Watched.start(path);
    const outcome = await w
      .until(() => false, { timeoutMs: 1500, describe: path })
      .catch((err: Error) => err.message);
    w.stop();
    if (typeof outcome === "string" && outcome.includes("not reached")) return;
    if (Date.now() > deadline) throw new Error(`${path}: watches keep ending: ${outcome}`);
  }
}

beforeAll(async () => {
  await installCrds();
  await untilWatchable("/apis/kiln.dev/v1alpha1/enginebuilds");
  await untilWatchable("/apis/kiln.dev/v1alpha1/inferencemodels");
});
afterAll(async () => {
  await Promise.all(namespaces.map(deleteNamespace));
});

async function namespace(prefix: string) {
  const ns = await createNamespace(prefix);
  namespaces.push(ns);
  return ns;
}

const untilModel = (
  ns: string,
  name: string,
  done: (m: InferenceModel) => boolean,
  describe: string,
  timeoutMs = 60_000,
) =>
  Watched.until<InferenceModel>(
    paths(ns).models,
    { fieldSelector: `metadata.name=${name}` },
    (o) => [...o.values()].some(done),
    { timeoutMs, describe: `InferenceModel ${ns}/${name} ${describe}` },
  );

/** A sample of this operator's own Prometheus counter, 0 when it has not been incremented yet. */
async function metric(operator: TestOperator, series: string): Promise<number> {
  const res = await operator.http.inject({ method: "GET", url: "/metrics" });
  const line = res.body.split("\n").find((l) => l.startsWith(`${series} `));
  return line ? Number(line.split(" ").pop()) : 0;
}

describe("faults: object store, node loss, conflicting edits", () => {
  it("reports an unreachable object store on the EngineBuild, retries with backoff and finishes when it returns", async () => {
    const s3 = new URL(testS3().endpoint);
    const gate = new TcpGate(s3.hostname, Number(s3.port));
    await gate.open();
    const base = operatorEnv();
    const env = { ...base, KILN_STORE_ENDPOINT: gate.url };
    const ns = await namespace("s3down");
    // The builder writes past the gate, straight to the S3 server: only the operator loses it.
    const builder = new FakeBuilder(ns, storeOf(base));
    await builder.ready();
    await gate.close();
    const builds = await Watched.start<EngineBuild>(paths(ns).builds);
    const operator = await startTestOperator(env);
    try {
      await client.create(IM_RESOURCE, inferenceModel(ns, "outage"));
      // Before any Job the operator must look for a cached engine, and cannot: it says so.
      await builds.until(
        (o) =>
          [...o.values()].some((b) =>
            b.status?.conditions?.some((c) => c.reason === "ObjectStoreUnavailable" && c.status === "False"),
          ),
        { timeoutMs: 60_000, describe: "EngineBuild condition ObjectStoreUnavailable" },
      );
      const failing = builds.list()[0];
      expect(failing?.status?.message).toContain(gate.url.replace("http://", ""));
      expect(builder.jobs).toHaveLength(0);
      // Failures go back to the rate-limited queue: retried, not dropped and not hot-looped.
      const errorsSeries = 'kiln_reconcile_total{controller="enginebuild",outcome="error"}';
      const deadline = Date.now() + 30_000;
      while ((await metric(operator, errorsSeries)) < 2 && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      expect(await metric(operator, errorsSeries)).toBeGreaterThanOrEqual(2);

      await gate.open();
      await untilModel(ns, "outage", (m) => m.status?.phase === "Ready", "Ready after the store returned");
      expect(builder.jobs).toHaveLength(1);
      expect(builds.list()[0]?.status).toMatchObject({ phase: "Succeeded", attempts: 1 });
      expect(builds.list()[0]?.status?.conditions?.some((c) => c.reason === "ObjectStoreUnavailable")).toBe(
        false,
      );
    } finally {
      await operator.stop();
      await builder.stop();
      builds.stop();
      await gate.close();
    }
  });

  it("replaces the build pod of a removed GPU node and still finishes the EngineBuild", {
    timeout: 180_000,
  }, async () => {
    const env = operatorEnv();
    const ns = await namespace("nodeloss");
    // kwok completes every Job pod at once, so the first pod must land on a node kwok leaves alone:
    // a node object without kwok's annotation whose Ready status this test writes, like a kubelet
    // that then dies. L40S: no other node of the shared cluster offers it.
    const doomed = gpuNodeManifest({
      name: uniqueName("kiln-l40s-doomed"),
      product: "NVIDIA-L40S",
      smArch: "sm_89",
      gpus: 8,
    });
    delete doomed.metadata?.annotations;
    const survivor = gpuNodeManifest({
      name: uniqueName("kiln-l40s"),
      product: "NVIDIA-L40S",
      smArch: "sm_89",
      gpus: 8,
    });
    await client.create(NODE, doomed as V1Node & KubeObject);
    const now = new Date().toISOString();
    // The node lifecycle controller writes the new node too: retry a write that lost that race.
    for (let attempt = 1; ; attempt++) {
      try {
        await client.replaceStatus(NODE, {
          ...((await client.get<V1Node & KubeObject>(
            NODE,
            undefined,
            doomed.metadata?.name ?? "",
          )) as V1Node & KubeObject),
          status: {
            ...doomed.status,
            conditions: [
              {
                type: "Ready",
                status: "True",
                reason: "KubeletReady",
                message: "fault test",
                lastHeartbeatTime: now as unknown as Date,
                lastTransitionTime: now as unknown as Date,
              },
            ],
          },
        });
        break;
      } catch (err) {
        if (!(err instanceof ApiError && err.code === 409) || attempt >= 10) throw err;
      }
    }
    const builder = new FakeBuilder(ns, storeOf(env));
    await builder.ready();
    const pods = await Watched.start<V1Pod & KubeObject>(paths(ns).pods);
    const operator = await startTestOperator(env);
    try {
      await client.create(IM_RESOURCE, inferenceModel(ns, "orphan", { gpu: { products: ["L40S"] } }));
      await pods.until((o) => [...o.values()].some((p) => p.spec?.nodeName === doomed.metadata?.name), {
        timeoutMs: 60_000,
        describe: "the build pod bound to the doomed node",
      });
      // The replacement needs somewhere to go; then the node disappears. The pod garbage collector
      // deletes pods bound to a node that no longer exists, and the Job controller replaces them.
      await client.create(NODE, survivor as V1Node & KubeObject);
      await client.delete(NODE, undefined, doomed.metadata?.name ?? "");
      // The pod garbage collector waits 40 s before deleting a pod of a vanished node, and runs
      // every 20 s: up to a minute before the Job controller sees the pod gone.
      await untilModel(
        ns,
        "orphan",
        (m) => m.status?.phase === "Ready",
        "Ready after its node was removed",
        120_000,
      );
      const builds = await client.list<EngineBuild>(
        { apiVersion: "kiln.dev/v1alpha1", kind: "EngineBuild", plural: "enginebuilds", namespaced: true },
        ns,
      );
      expect(builds.items).toHaveLength(1);
      expect(builds.items[0]?.status?.phase).toBe("Succeeded");
      expect(builder.jobs).toHaveLength(1);
      const nodesUsed = new Set(
        pods.events.map((e) => e.object.spec?.nodeName).filter((n): n is string => n !== undefined),
      );
      expect(nodesUsed).toEqual(new Set([doomed.metadata?.name, survivor.metadata?.name]));
    } finally {
      await operator.stop();
      await builder.stop();
      pods.stop();
      for (const n of [doomed, survivor])
        await client.delete(NODE, undefined, n.metadata?.name ?? "").catch(() => undefined);
    }
  });

  it("keeps every spec change made while a reconcile was writing status (resourceVersion conflicts)", async () => {
    const env = operatorEnv();
    const ns = await namespace("conflict");
    const builder = new FakeBuilder(ns, storeOf(env));
    await builder.ready();
    const operator = await startTestOperator(env);
    // Edits land the moment the operator created the first EngineBuild: it is mid-reconcile, holding
    // the old object, and its status write carries a stale resourceVersion.
    const batchSizes = [2, 3, 4];
    let edited = false;
    const builds = await Watched.start<EngineBuild>(paths(ns).builds, {}, async (e) => {
      if (e.type !== "ADDED" || edited) return;
      edited = true;
      for (const maxBatchSize of batchSizes) {
        await kubectl(
          "patch",
          "inferencemodel",
          "contested",
          "-n",
          ns,
          "--type=merge",
          "-p",
          JSON.stringify({ spec: { engine: { maxBatchSize } } }),
        );
      }
    });
    try {
      await client.create(IM_RESOURCE, inferenceModel(ns, "contested"));
      await untilModel(
        ns,
        "contested",
        (m) =>
          m.status?.phase === "Ready" &&
          m.status.observedGeneration === m.metadata.generation &&
          (m.metadata.generation ?? 0) >= 1 + batchSizes.length,
        "Ready at its latest generation",
      );
      const model = await client.get<InferenceModel>(IM_RESOURCE, ns, "contested");
      const last = batchSizes[batchSizes.length - 1];
      const served = builds
        .list()
        .find((b) => b.spec.key === model?.status?.targets?.[0]?.servingEngine?.key);
      expect(served?.spec.engine.maxBatchSize).toBe(last);
      expect(
        await metric(operator, 'kiln_reconcile_total{controller="inferencemodel",outcome="success"}'),
      ).toBeGreaterThan(0);
    } finally {
      await operator.stop();
      await builder.stop();
      builds.stop();
    }
  });
});
