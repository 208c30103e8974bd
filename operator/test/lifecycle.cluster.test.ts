import { writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PutObjectCommand } from "@aws-sdk/client-s3";
import type { V1Deployment, V1Job, V1Node, V1Pod, V1Service } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { testS3, testS3Client } from "../../test/cluster/env.js";
import { gpuNodeManifest } from "../../test/cluster/gpu-nodes.js";
import { publishStandInEngine } from "../../test/fixtures/stand-in-engine.js";
import type { EngineBuild, InferenceModel } from "../src/api/types.js";
import type { KubeObject, ResourceType } from "../src/controller/kube.js";
import { buildSpecFor, shortKey } from "../src/inferencemodel/engine-key.js";
import { IM_RESOURCE } from "../src/inferencemodel/reconcile.js";
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
  servesTraffic,
  startTestOperator,
  storeOf,
  type TestOperator,
  Watched,
} from "./cluster-harness.js";

type Job = V1Job & KubeObject;
type Deployment = V1Deployment & KubeObject;
type Pod = V1Pod & KubeObject;

const NODE: ResourceType = { apiVersion: "v1", kind: "Node", plural: "nodes", namespaced: false };
const env = operatorEnv({
  KILN_BUILD_ATTEMPTS: "2",
  KILN_BUILDER_RESOURCES: JSON.stringify({
    requests: { cpu: "2", memory: "8Gi" },
    limits: { memory: "12Gi" },
  }),
});
const store = storeOf(env);
const toolchain = { version: env.KILN_TOOLCHAIN_VERSION ?? "", builderImage: env.KILN_BUILDER_IMAGE ?? "" };
const namespaces: string[] = [];
let operator: TestOperator;

const byName = <T extends KubeObject>(objects: Map<string, T>, name: string) =>
  [...objects.values()].find((o) => o.metadata?.name === name);

/** A namespace, a builder for its Jobs and watches on everything the operator creates there. */
async function scenario(prefix: string, succeeds?: ConstructorParameters<typeof FakeBuilder>[2]) {
  const ns = await createNamespace(prefix);
  namespaces.push(ns);
  const builder = new FakeBuilder(ns, store, succeeds);
  await builder.ready();
  const p = paths(ns);
  const [models, builds, jobs, deployments, pods] = await Promise.all([
    Watched.start<InferenceModel>(p.models),
    Watched.start<EngineBuild>(p.builds),
    Watched.start<Job>(p.jobs),
    Watched.start<Deployment>(p.deployments),
    Watched.start<Pod>(p.pods),
  ]);
  const watches = [models, builds, jobs, deployments, pods];
  const phaseOf = (name: string) => byName(models.objects, name)?.status?.phase;
  return {
    ns,
    builder,
    models,
    builds,
    jobs,
    deployments,
    pods,
    phaseOf,
    untilPhase: (name: string, phase: string, timeoutMs = 60_000) =>
      models.until((o) => byName(o, name)?.status?.phase === phase, {
        timeoutMs,
        describe: `InferenceModel ${ns}/${name} phase ${phase}`,
      }),
    stop: async () => {
      for (const w of watches) w.stop();
      await builder.stop();
    },
  };
}

beforeAll(async () => {
  await installCrds();
  operator = await startTestOperator(env);
});

afterAll(async () => {
  await operator?.stop();
  await Promise.all(namespaces.map(deleteNamespace));
});

describe("InferenceModel lifecycle against the real control plane", () => {
  it("kubectl apply of a model.yaml builds an engine, deploys it and reports Ready with real columns", async () => {
    const s = await scenario("apply");
    const file = join(tmpdir(), `${s.ns}-model.yaml`);
    await writeFile(
      file,
      stringify({
        apiVersion: "kiln.dev/v1alpha1",
        kind: "InferenceModel",
        metadata: { name: "tiny", namespace: s.ns },
        spec: {
          model: { source: "hf://TinyLlama/TinyLlama-1.1B-Chat-v1.0", revision: "fe8a4ea1" },
          engine: { precision: "bf16", maxInputLen: 1024, maxSeqLen: 2048 },
          gpu: { products: ["H100"] },
          runtime: { replicas: 2 },
        },
      }),
    );
    expect(await kubectl("apply", "-f", file)).toContain("inferencemodel.kiln.dev/tiny created");

    await s.untilPhase("tiny", "Ready");
    const model = byName(s.models.objects, "tiny");
    const build = s.builds.list()[0];
    expect(s.builds.list()).toHaveLength(1);
    expect(build?.status).toMatchObject({ phase: "Succeeded", attempts: 1, cacheHit: "false" });
    expect(build?.metadata.ownerReferences?.map((r) => r.uid)).toEqual([model?.metadata.uid]);
    expect(s.builder.jobs.map((j) => j.metadata?.name)).toEqual([build?.status?.jobName]);
    const job = s.builder.jobs[0];
    expect(job?.spec?.template.spec?.nodeSelector).toEqual({
      "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    });
    // The API server took the Job with the configured requests and limits beside the GPU limit.
    expect(job?.spec?.template.spec?.containers[0]?.resources).toEqual({
      requests: { cpu: "2", memory: "8Gi" },
      limits: { memory: "12Gi", "nvidia.com/gpu": "1" },
    });
    expect(job?.spec).toMatchObject({ backoffLimit: 0, activeDeadlineSeconds: 14400 });

    const key = build?.spec.key ?? "";
    const deployment = byName(s.deployments.objects, "tiny-h100");
    const container = deployment?.spec?.template.spec?.containers[0];
    expect(container?.env).toEqual(
      expect.arrayContaining([
        { name: "KILN_ENGINE_URI", value: `${env.KILN_STORE_URI}/engines/${key}/engine.kiln` },
        { name: "KILN_ENGINE_SHA256", value: build?.status?.artifact?.sha256 },
      ]),
    );
    expect(deployment?.spec?.template.metadata?.annotations?.["kiln.dev/engine-sha256"]).toBe(
      build?.status?.artifact?.sha256,
    );
    expect(container?.readinessProbe?.httpGet?.path).toBe("/readyz");
    expect(deployment?.status?.readyReplicas).toBe(2);
    const service = await client.get<V1Service & KubeObject>(
      { apiVersion: "v1", kind: "Service", plural: "services", namespaced: true },
      s.ns,
      "tiny",
    );
    expect(service?.spec?.ports?.[0]?.port).toBe(8000);
    expect(model?.status).toMatchObject({
      observedGeneration: 1,
      ready: "2/2",
      endpoint: `http://tiny.${s.ns}.svc:8000`,
      targets: [{ product: "H100", servingEngine: { key }, desiredEngine: { key } }],
    });

    const [header, row] = (await kubectl("get", "inferencemodels", "-n", s.ns)).trim().split("\n");
    expect(header?.split(/\s+/)).toEqual([
      "NAME",
      "PRECISION",
      "GPU",
      "PHASE",
      "READY",
      "ENGINE",
      "ENDPOINT",
      "AGE",
    ]);
    expect(row?.split(/\s+/).slice(0, 7)).toEqual([
      "tiny",
      "bf16",
      // The API server prints an array column as JSON: every product is listed, straight from spec.
      '["H100"]',
      "Ready",
      "2/2",
      shortKey(key),
      `http://tiny.${s.ns}.svc:8000`,
    ]);
    const [, buildRow] = (await kubectl("get", "eb", "-n", s.ns)).trim().split("\n");
    expect(buildRow?.split(/\s+/).slice(0, 4)).toEqual([
      build?.metadata.name,
      "hf://TinyLlama/TinyLlama-1.1B-Chat-v1.0",
      "Succeeded",
      "1",
    ]);
    await s.stop();
  });

  it("gives two models with identical engine options one EngineBuild and one Job, and deleting one keeps the shared build", async () => {
    const s = await scenario("share");
    await Promise.all(
      ["alpha", "beta"].map((name) => client.create(IM_RESOURCE, inferenceModel(s.ns, name))),
    );
    await s.untilPhase("alpha", "Ready");
    await s.untilPhase("beta", "Ready");
    expect(s.builds.list()).toHaveLength(1);
    expect(s.jobs.events.filter((e) => e.type === "ADDED")).toHaveLength(1);
    const build = s.builds.list()[0];
    const uids = ["alpha", "beta"].map((n) => byName(s.models.objects, n)?.metadata.uid);
    expect(build?.metadata.ownerReferences?.map((r) => r.uid).sort()).toEqual([...uids].sort());

    // Deleting alpha: the garbage collector removes its Deployment and Service (owner references);
    // the build stays, owned by beta alone.
    await client.delete(IM_RESOURCE, s.ns, "alpha");
    await s.deployments.until((o) => !byName(o, "alpha-h100") && !!byName(o, "beta-h100"), {
      timeoutMs: 30_000,
      describe: "alpha's Deployment garbage-collected",
    });
    await s.builds.until(
      (o) => byName(o, build?.metadata.name ?? "")?.metadata.ownerReferences?.length === 1,
      {
        timeoutMs: 30_000,
        describe: "the shared build released by alpha",
      },
    );
    expect(byName(s.builds.objects, build?.metadata.name ?? "")?.metadata.ownerReferences?.[0]?.uid).toBe(
      uids[1],
    );
    expect(
      await client.get(
        { apiVersion: "v1", kind: "Service", plural: "services", namespaced: true },
        s.ns,
        "alpha",
      ),
    ).toBeUndefined();
    expect(s.phaseOf("beta")).toBe("Ready");

    // Deleting the last user removes the build, and with it the build Job.
    await client.delete(IM_RESOURCE, s.ns, "beta");
    await s.builds.until((o) => o.size === 0, { timeoutMs: 30_000, describe: "the build garbage-collected" });
    await s.jobs.until((o) => o.size === 0, {
      timeoutMs: 30_000,
      describe: "the build Job garbage-collected",
    });
    await s.deployments.until((o) => o.size === 0, { timeoutMs: 30_000, describe: "beta's Deployment gone" });
    await s.stop();
  });

  it("uses an engine already in object storage without any Job", async () => {
    const s = await scenario("cached");
    const model = inferenceModel(s.ns, "warm", { engine: { maxBatchSize: 8 } });
    await publishStandInEngine(
      store,
      buildSpecFor(model.spec, "H100", model.spec.model.revision ?? "", toolchain),
    );
    await client.create(IM_RESOURCE, model);
    await s.untilPhase("warm", "Ready");
    expect(s.builds.list()[0]?.status).toMatchObject({ phase: "Succeeded", cacheHit: "true", attempts: 0 });
    expect(s.jobs.events).toHaveLength(0);
    await s.stop();
  });

  it("retries a failing build, then marks it Failed while the serving engine and its pods stay untouched", async () => {
    const s = await scenario("failing", (spec) => spec.engine.maxBatchSize !== 32);
    await client.create(IM_RESOURCE, inferenceModel(s.ns, "steady"));
    await s.untilPhase("steady", "Ready");
    const servingKey = s.builds.list()[0]?.spec.key;
    const podsBefore = s.pods
      .list()
      .filter(servesTraffic)
      .map((p) => p.metadata?.uid);
    expect(podsBefore).toHaveLength(1);

    const live = byName(s.models.objects, "steady");
    await client.replace(IM_RESOURCE, {
      ...live,
      spec: { ...live?.spec, engine: { ...live?.spec.engine, maxBatchSize: 32 } },
    } as InferenceModel);
    await s.untilPhase("steady", "Degraded");
    const failed = s.builds.list().find((b) => b.spec.key !== servingKey);
    expect(failed?.status).toMatchObject({ phase: "Failed", attempts: 2 });
    expect(failed?.status?.conditions?.find((c) => c.type === "Ready")).toMatchObject({
      status: "False",
      reason: "ManifestMissing",
      message: "attempt 2/2: the Job completed but wrote no manifest.json",
    });
    expect(s.jobs.events.filter((e) => e.type === "ADDED")).toHaveLength(3);
    const model = byName(s.models.objects, "steady");
    expect(model?.status?.conditions?.find((c) => c.type === "EngineReady")).toMatchObject({
      status: "False",
      reason: "BuildFailed",
    });
    expect(model?.status?.targets?.[0]?.servingEngine?.key).toBe(servingKey);
    const deployment = byName(s.deployments.objects, "steady-h100");
    expect(deployment?.spec?.template.metadata?.annotations?.["kiln.dev/engine-key"]).toBe(servingKey);
    expect(
      s.pods
        .list()
        .filter(servesTraffic)
        .map((p) => p.metadata?.uid),
    ).toEqual(podsBefore);
    // No runtime pod other than the one serving the old engine ever appeared: nothing rolled.
    const runtimePods = s.pods.events.filter(
      (e) => e.object.metadata?.labels?.["app.kubernetes.io/component"] === "runtime",
    );
    expect(new Set(runtimePods.map((e) => e.object.metadata?.uid))).toEqual(new Set(podsBefore));
    await s.stop();
  });

  it("fails pre-flight for a model whose weights and KV cache cannot fit the GPU, without any build", async () => {
    const s = await scenario("preflight");
    await client.create(
      IM_RESOURCE,
      inferenceModel(s.ns, "huge", {
        model: {
          source: "hf://meta-llama/Llama-3.1-70B",
          revision: "1",
          size: { parameters: 70_000_000_000, layers: 80, kvHeads: 8, headDim: 128 },
        },
      }),
    );
    await s.untilPhase("huge", "Failed");
    const ready = byName(s.models.objects, "huge")?.status?.conditions?.find((c) => c.type === "EngineReady");
    expect(ready).toMatchObject({ status: "False", reason: "PreflightFailed" });
    expect(ready?.message).toMatch(/on H100 \(80\.0 GB per GPU, tensorParallel 1\): weights need 140\.0 GB/);
    expect(s.builds.events).toHaveLength(0);
    expect(s.jobs.events).toHaveLength(0);
    await s.stop();
  });

  it("builds one engine per GPU product and runs each Deployment only on nodes of its product", async () => {
    const s = await scenario("multi");
    await client.create(
      IM_RESOURCE,
      inferenceModel(s.ns, "dual", { gpu: { products: ["H100", "A100-80GB"] } }),
    );
    await s.untilPhase("dual", "Ready");
    const builds = s.builds.list();
    expect(builds.map((b) => b.spec.target.product).sort()).toEqual(["A100-80GB", "H100"]);
    expect(new Set(builds.map((b) => b.spec.key)).size).toBe(2);
    expect(s.jobs.events.filter((e) => e.type === "ADDED")).toHaveLength(2);
    const nodes = await client.list<V1Node & KubeObject>(NODE);
    const productOfNode = new Map(
      nodes.items.map((n) => [n.metadata?.name, n.metadata?.labels?.["nvidia.com/gpu.product"]]),
    );
    const expected = { "dual-h100": "NVIDIA-H100-80GB-HBM3", "dual-a100-80gb": "NVIDIA-A100-SXM4-80GB" };
    for (const [deployment, label] of Object.entries(expected)) {
      const d = byName(s.deployments.objects, deployment);
      const engine = d?.spec?.template.metadata?.annotations?.["kiln.dev/engine-key"];
      const product = deployment === "dual-h100" ? "H100" : "A100-80GB";
      expect(engine).toBe(builds.find((b) => b.spec.target.product === product)?.spec.key);
      const pods = s.pods
        .list()
        .filter((p) => p.metadata?.labels?.["kiln.dev/gpu-product"] === product.toLowerCase());
      expect(pods.length).toBeGreaterThan(0);
      for (const pod of pods) expect(productOfNode.get(pod.spec?.nodeName)).toBe(label);
    }
    await s.stop();
  });

  it("builds only for GPU products some node offers, and builds the rest once such a node joins", async () => {
    const s = await scenario("present");
    await client.create(IM_RESOURCE, inferenceModel(s.ns, "wide", { gpu: { products: ["H100", "H200"] } }));
    await s.untilPhase("wide", "Ready");
    expect(s.builds.list().map((b) => b.spec.target.product)).toEqual(["H100"]);
    expect(byName(s.models.objects, "wide")?.status?.targets).toEqual(
      expect.arrayContaining([
        { product: "H200", message: "no node offers H200; its engine is built once one joins" },
      ]),
    );

    const node = gpuNodeManifest({
      name: `kiln-h200-${s.ns}`,
      product: "NVIDIA-H200",
      smArch: "sm_90",
      gpus: 8,
    });
    await client.create(NODE, node as KubeObject);
    try {
      await s.deployments.until((o) => byName(o, "wide-h200")?.status?.readyReplicas === 1, {
        timeoutMs: 60_000,
        describe: "the H200 Deployment ready once an H200 node joined",
      });
      expect(
        s.builds
          .list()
          .map((b) => b.spec.target.product)
          .sort(),
      ).toEqual(["H100", "H200"]);
      const pod = s.pods.list().find((p) => p.metadata?.labels?.["kiln.dev/gpu-product"] === "h200");
      expect(pod?.spec?.nodeName).toBe(node.metadata?.name);
    } finally {
      await client.delete(NODE, undefined, node.metadata?.name ?? "");
    }
    await s.stop();
  });

  it("resolves and pins the revision of an s3:// checkpoint when spec.model.revision is omitted", async () => {
    const s = await scenario("revision");
    const s3 = testS3Client();
    const prefix = `checkpoints/${s.ns}/tiny`;
    const put = await s3.send(
      new PutObjectCommand({ Bucket: testS3().bucket, Key: `${prefix}/config.json`, Body: "{}" }),
    );
    s3.destroy();
    const etag = put.ETag?.replace(/"/g, "");
    await client.create(
      IM_RESOURCE,
      inferenceModel(s.ns, "pinned", { model: { source: `s3://${testS3().bucket}/${prefix}` } }),
    );
    await s.untilPhase("pinned", "Ready");
    expect(byName(s.models.objects, "pinned")?.status?.model).toEqual({
      source: `s3://${testS3().bucket}/${prefix}`,
      revision: etag,
    });
    expect(s.builds.list()[0]?.spec.model.revision).toBe(etag);
    await s.stop();
  });
});
