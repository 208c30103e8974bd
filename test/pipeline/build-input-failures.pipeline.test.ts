import { cp, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ListObjectsV2Command } from "@aws-sdk/client-s3";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import type { EngineBuild } from "../../operator/src/api/types.js";
import { KubeClient } from "../../operator/src/controller/kube.js";
import { IM_RESOURCE } from "../../operator/src/inferencemodel/reconcile.js";
import { testCluster, testKubeConfig, testS3Client } from "../cluster/env.js";
import { waitUntil } from "../cluster/wait.js";
import { SECRET } from "../pod-runner/resources.js";
import { listBuilds } from "./kube.js";
import {
  s3CredentialsSecret,
  TINY_MODEL_CLAIM,
  tinyInferenceModel,
  uploadModel,
  writeTinyModel,
} from "./model.js";
import { type Stack, startStack } from "./stack.js";

// The failures that come from the model itself, with the real builder process run by the pod
// runner: credentials the S3 server refuses, and an architecture the compiler does not support.
// Both are permanent (the builder exits 2 and the Job fails at once instead of retrying), the
// reason reaches the EngineBuild's status and a Warning Event, and nothing is published.

const NS = `input-failures-${Date.now().toString(36)}`;
const STORE_PREFIX = `input-failures-${Date.now()}`;
const MODEL_PREFIX = `models/${STORE_PREFIX}/tiny-llama`;
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
  const dir = await writeTinyModel(stack.claimsDir);
  const s3 = testS3Client();
  try {
    await uploadModel(s3, cluster.s3.bucket, MODEL_PREFIX, dir);
  } finally {
    s3.destroy();
  }
  // The same weights under a config.json that names an architecture Kiln does not compile.
  const gpt2 = join(stack.claimsDir, TINY_MODEL_CLAIM, "gpt2");
  await cp(dir, gpt2, { recursive: true });
  const config = JSON.parse(await readFile(join(gpt2, "config.json"), "utf8"));
  await writeFile(
    join(gpt2, "config.json"),
    JSON.stringify({ ...config, architectures: ["GPT2LMHeadModel"], model_type: "gpt2" }),
  );
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

async function warningEventsOf(build: EngineBuild): Promise<string> {
  const events = await client.request<{ items: { type: string; message: string }[] }>(
    "GET",
    `/api/v1/namespaces/${NS}/events?fieldSelector=${encodeURIComponent(`involvedObject.name=${build.metadata.name}`)}`,
  );
  return events.items
    .filter((e) => e.type === "Warning")
    .map((e) => e.message)
    .join("\n");
}

describe("a model the builder cannot read or compile ends Failed at once, with the reason", () => {
  test("an s3:// source whose credentials Secret holds keys the S3 server refuses", async () => {
    await client.create(
      SECRET,
      s3CredentialsSecret("wrong-keys", NS, {
        accessKeyId: "AKIAWRONGWRONG",
        secretAccessKey: "not-the-key",
      }),
    );
    const model = await tinyInferenceModel("bad-credentials", NS);
    model.spec.model = {
      source: `s3://${testCluster().s3.bucket}/${MODEL_PREFIX}`,
      credentialsSecret: "wrong-keys",
    };
    await client.create(IM_RESOURCE, model);
    const build = await failedBuildOf("bad-credentials");
    // Permanent: the first attempt's exit 2 failed the Job; no second attempt was started.
    expect(build.status?.attempts).toBe(1);
    expect(build.status?.message).toMatch(
      /InvalidAccessKeyId|XAdminUserNotFound|SignatureDoesNotMatch|AccessDenied/,
    );
    expect(build.status?.message).toMatch(/credentialsSecret/);
    expect(await warningEventsOf(build)).toMatch(/credentialsSecret/);
  });

  test("a checkpoint of an unsupported architecture (GPT2LMHeadModel)", async () => {
    const model = await tinyInferenceModel("unsupported-arch", NS);
    model.spec.model = { source: `pvc://${TINY_MODEL_CLAIM}/gpt2` };
    await client.create(IM_RESOURCE, model);
    const build = await failedBuildOf("unsupported-arch");
    expect(build.status?.attempts).toBe(1);
    expect(build.status?.message).toMatch(/GPT2LMHeadModel.*not supported/);
    expect(await warningEventsOf(build)).toMatch(/GPT2LMHeadModel/);
  });

  test("no engine or manifest was published for either", async () => {
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
