import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ListObjectsV2Command } from "@aws-sdk/client-s3";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { EngineBuild } from "../../operator/src/api/types.js";
import { KubeClient } from "../../operator/src/controller/kube.js";
import { IM_RESOURCE } from "../../operator/src/inferencemodel/reconcile.js";
import { testCluster, testKubeConfig, testS3Client } from "../cluster/env.js";
import { waitUntil } from "../cluster/wait.js";
import { listBuilds } from "./kube.js";
import { tinyInferenceModel, writeTinyModel } from "./model.js";
import { type Stack, startStack } from "./stack.js";

// Build failures, with the real builder process run by the pod runner: the reason reaches the
// EngineBuild's status and an Event through the Job pod's termination message, and nothing is
// published to the store.

const NS = `failures-${Date.now().toString(36)}`;
const STORE_PREFIX = `failures-${Date.now()}`;
let stack: Stack;
let runDir: string;
let client: KubeClient;

beforeAll(async () => {
  const cluster = testCluster();
  runDir = await mkdtemp(join(tmpdir(), "kiln-pipeline-"));
  client = new KubeClient(testKubeConfig());
  stack = await startStack({
    kubeConfig: testKubeConfig(),
    kubeconfigPath: cluster.kubeconfigPath,
    s3: cluster.s3,
    runDir,
    modelNamespaces: [NS],
    toolchainVersion: "tc-1",
    storePrefix: STORE_PREFIX,
  });
  await writeTinyModel(stack.claimsDir);
});

afterAll(async () => {
  await stack?.stop();
  if (runDir) await rm(runDir, { recursive: true, force: true });
});

async function failedBuildOf(model: string): Promise<EngineBuild> {
  let failed: EngineBuild | undefined;
  await waitUntil(
    `EngineBuild of ${model} Failed`,
    async () => {
      failed = (await listBuilds(client, NS)).find(
        (b) => b.metadata.ownerReferences?.some((r) => r.name === model) && b.status?.phase === "Failed",
      );
      return failed !== undefined;
    },
    { timeoutMs: 120_000, intervalMs: 250 },
  );
  if (!failed) throw new Error("unreachable");
  return failed;
}

async function warningEventsOf(build: EngineBuild): Promise<string[]> {
  const events = await client.request<{ items: { type: string; message: string }[] }>(
    "GET",
    `/api/v1/namespaces/${NS}/events?fieldSelector=${encodeURIComponent(`involvedObject.name=${build.metadata.name}`)}`,
  );
  return events.items.filter((e) => e.type === "Warning").map((e) => e.message);
}

describe("build failures end in a Failed EngineBuild with the reason, and publish nothing", () => {
  test("a source that does not exist", async () => {
    const model = await tinyInferenceModel("missing-source", NS);
    model.spec.model.source = "pvc://models/does-not-exist";
    await client.create(IM_RESOURCE, model);
    const build = await failedBuildOf("missing-source");
    expect(build.status?.message).toMatch(/does-not-exist/);
    expect((await warningEventsOf(build)).join("\n")).toMatch(/does-not-exist/);
  });

  test("a GPU target this builder cannot compile for (the CPU-only builder on the L4 node)", async () => {
    const model = await tinyInferenceModel("wrong-target", NS);
    model.spec.gpu.products = ["L4"];
    await client.create(IM_RESOURCE, model);
    const build = await failedBuildOf("wrong-target");
    expect(build.spec.target).toMatchObject({ product: "L4", arch: "sm_89" });
    // The builder's own words, from its termination message: the target it was asked for.
    expect(build.status?.message).toMatch(/targets L4 \(sm_89\)/);
    expect((await warningEventsOf(build)).length).toBeGreaterThan(0);
  });

  test("no engine or manifest was published for either", async () => {
    // Scoped to the failed builds' keys: models left by earlier files of the tier may still be
    // reconciled (and legitimately built) by this file's operator under the same prefix.
    const keys = (await listBuilds(client, NS))
      .filter((b) => b.status?.phase === "Failed")
      .map((b) => b.spec.key);
    expect(keys).toHaveLength(2);
    const s3 = testS3Client();
    try {
      for (const key of keys) {
        const listed = await s3.send(
          new ListObjectsV2Command({
            Bucket: testCluster().s3.bucket,
            Prefix: `${STORE_PREFIX}/engines/${key}/`,
          }),
        );
        expect(listed.Contents ?? []).toEqual([]);
      }
    } finally {
      s3.destroy();
    }
  });
});
