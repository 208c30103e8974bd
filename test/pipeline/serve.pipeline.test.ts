import { readFile } from "node:fs/promises";
import { GetObjectCommand } from "@aws-sdk/client-s3";
import OpenAI from "openai";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { enginePaths, parseProgressReport, RUNTIME_ENV, validateManifest } from "../../lib/manifest.js";
import { ANNOTATIONS } from "../../operator/src/api/labels.js";
import type { KubeClient } from "../../operator/src/controller/kube.js";
import { IM_RESOURCE } from "../../operator/src/inferencemodel/reconcile.js";
import { testCluster, testS3Client } from "../cluster/env.js";
import { waitUntil } from "../cluster/wait.js";
import { SECRET } from "../pod-runner/resources.js";
import { serviceUrl } from "./endpoint.js";
import { describePods, envOf, getModel, listBuilds, listDeployments } from "./kube.js";
import {
  s3CredentialsSecret,
  tinyInferenceModel,
  type UploadedFile,
  uploadModel,
  writeTinyModel,
} from "./model.js";
import { type PipelineRun, startPipelineRun } from "./pipeline-run.js";
import type { Stack } from "./stack.js";

// The product's main job, end to end: an InferenceModel whose checkpoint the real S3 server serves
// (s3://, read with the model's own credentials Secret) applied to a real control plane; the
// operator (its own process) creates the EngineBuild and the build Job; the pod runner runs the
// real builder entrypoint against the real S3 server; the operator rolls out the runtime, which the
// pod runner runs too; a completion comes back through the Service's ready endpoint.

const MODEL = "tiny";
const MODEL_SECRET = "tiny-model-s3";

let run: PipelineRun;
let ns: string;
let storePrefix: string;
let modelPrefix: string;
let stack: Stack;
let client: KubeClient;
let uploaded: UploadedFile[];

async function diagnostics(): Promise<string> {
  const model = await getModel(client, ns, MODEL).catch(() => undefined);
  const builds = await listBuilds(client, ns).catch(() => []);
  const tail = async (file: string) =>
    (await readFile(file, "utf8").catch(() => "")).split("\n").slice(-15).join("\n");
  return [
    `InferenceModel status: ${JSON.stringify(model?.status)}`,
    `EngineBuilds: ${JSON.stringify(builds.map((b) => ({ name: b.metadata.name, status: b.status })))}`,
    `pods:\n${await describePods(client, ns).catch((e: Error) => e.message)}`,
    ...(await Promise.all(stack.processes.map(async (p) => `${p.name} log tail:\n${await tail(p.logFile)}`))),
  ].join("\n");
}

/** waitUntil, and on timeout the state of everything involved, so a red run says where it stopped. */
async function waitFor(what: string, probe: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  try {
    await waitUntil(what, probe, { timeoutMs, intervalMs: 250 });
  } catch (err) {
    throw new Error(`${(err as Error).message}\n${await diagnostics()}`);
  }
}

beforeAll(async () => {
  const cluster = testCluster();
  run = await startPipelineRun("pipeline");
  ({ ns, storePrefix, stack, client } = run);
  modelPrefix = `models/${storePrefix}/tiny-llama`;
  const s3 = testS3Client();
  try {
    uploaded = await uploadModel(s3, cluster.s3.bucket, modelPrefix, await writeTinyModel(stack.claimsDir));
  } finally {
    s3.destroy();
  }
  await client.create(SECRET, s3CredentialsSecret(MODEL_SECRET, ns, cluster.s3));
});

afterAll(async () => {
  await run?.stop();
});

describe("apply an InferenceModel, build it, serve it", () => {
  test("the engine is built by the builder Job into S3, rolled out, and answers a completion through the Service", async () => {
    const model = await tinyInferenceModel(MODEL, ns);
    model.spec.model = {
      source: `s3://${testCluster().s3.bucket}/${modelPrefix}`,
      credentialsSecret: MODEL_SECRET,
    };
    await client.create(IM_RESOURCE, model);

    // The EngineBuild succeeds with an artifact the builder process published (manifest last).
    await waitFor(
      "EngineBuild Succeeded",
      async () => (await listBuilds(client, ns)).some((b) => b.status?.phase === "Succeeded"),
      180_000,
    );
    const [build] = await listBuilds(client, ns);
    const artifact = build?.status?.artifact;
    expect(build?.spec.target.product).toBe("cpu");
    // What the engine does on this device, measured by the builder before it serves anything.
    expect(build?.status?.benchmark).toMatchObject({
      device: expect.stringMatching(/^cpu:/),
      batch1: { batchSize: 1, tokensPerSecond: expect.any(Number) },
      maxBatch: { batchSize: build?.spec.engine.maxBatchSize },
    });
    expect(artifact?.uri).toMatch(
      new RegExp(`^s3://${testCluster().s3.bucket}/${storePrefix}/engines/${build?.spec.key}/engine\\.kiln$`),
    );

    const key = build?.spec.key ?? "";
    const s3 = testS3Client();
    const read = async (path: string) =>
      (
        await s3.send(
          new GetObjectCommand({ Bucket: testCluster().s3.bucket, Key: `${storePrefix}/${path}` }),
        )
      ).Body?.transformToString();
    let manifestText: string | undefined;
    let progressText: string | undefined;
    try {
      manifestText = await read(enginePaths(key).manifest);
      progressText = await read(enginePaths(key).progress);
    } finally {
      s3.destroy();
    }
    // The progress the operator shows while a build runs: the builder's last report, in the store.
    expect(parseProgressReport(progressText)).toMatchObject({ phase: "done", percent: 100 });
    const manifest = validateManifest(JSON.parse(manifestText ?? "null"), key);
    expect(manifest.ok).toBe(true);
    if (!manifest.ok) return;
    expect(manifest.value.sha256).toBe(artifact?.sha256);
    expect(manifest.value.target).toMatchObject({ product: "cpu", arch: "cpu" });
    // The builder read exactly the bytes that were uploaded to the S3 server.
    expect(manifest.value.source?.uri).toBe(`s3://${testCluster().s3.bucket}/${modelPrefix}`);
    expect(manifest.value.source?.files.map(({ path, sha256 }) => ({ path, sha256 }))).toEqual(uploaded);
    expect(uploaded.map((f) => f.path)).toEqual([
      "config.json",
      "model.safetensors",
      "tokenizer.json",
      "tokenizer_config.json",
    ]);

    // The runtime Deployment pins exactly that engine.
    await waitFor(
      "runtime Deployment created",
      async () => (await listDeployments(client, ns)).length > 0,
      60_000,
    );
    const [deployment] = await listDeployments(client, ns);
    if (!deployment) throw new Error("no Deployment");
    expect(envOf(deployment, RUNTIME_ENV.engineUri)).toBe(artifact?.uri);
    expect(envOf(deployment, RUNTIME_ENV.engineSha256)).toBe(artifact?.sha256);
    expect(deployment.spec.template.spec.containers[0]?.image).toBe("kiln/runtime:tc-1");

    // The runtime process loads it, passes its readiness probe, and the model reports Ready.
    await waitFor(
      "InferenceModel Ready",
      async () => (await getModel(client, ns, MODEL))?.status?.phase === "Ready",
      180_000,
    );
    let url: string | undefined;
    await waitFor(
      "a ready endpoint behind the Service",
      async () => {
        url = await serviceUrl(client, ns, MODEL);
        return url !== undefined;
      },
      30_000,
    );

    const res = await fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: MODEL, prompt: "hello world", max_tokens: 8, temperature: 0 }),
    });
    const body = (await res.json()) as {
      model: string;
      choices: { text: string }[];
      usage: { completion_tokens: number };
    };
    expect(res.status, JSON.stringify(body)).toBe(200);
    expect(body.model).toBe(MODEL);
    expect(body.choices[0]?.text).toEqual(expect.any(String));
    expect(body.usage.completion_tokens).toBeGreaterThan(0);
  });

  test("a toolchain bump rebuilds the engine and the new runtime takes over while clients see no failed request", async () => {
    const [before] = await listDeployments(client, ns);
    const oldKey = before?.spec.template.metadata.annotations?.[ANNOTATIONS.engineKey];
    expect(oldKey).toMatch(/^[0-9a-f]{64}$/);

    // The client a user would have: the OpenAI SDK with its default retry policy (connection errors,
    // 429/503 honouring Retry-After), and a fetch that picks a ready endpoint of the Service per
    // request, as kube-proxy picks one per connection.
    const openai = new OpenAI({
      baseURL: "http://service.invalid/v1",
      apiKey: "unused",
      fetch: async (input, init) => {
        const url = await serviceUrl(client, ns, MODEL);
        if (!url) throw new TypeError(`Service ${ns}/${MODEL} has no ready endpoint`);
        return fetch(String(input).replace("http://service.invalid", url), init);
      },
    });
    const failures: string[] = [];
    let answered = 0;
    let stop = false;
    const loop = (async () => {
      while (!stop) {
        try {
          const res = await openai.completions.create({
            model: MODEL,
            prompt: "hello",
            max_tokens: 4,
            temperature: 0,
          });
          if (res.choices.length === 1) answered++;
        } catch (err) {
          failures.push((err as Error).message);
        }
      }
    })();

    try {
      await waitFor("the client loop answered before the bump", async () => answered >= 3, 30_000);
      await stack.setToolchain("tc-2");

      await waitFor(
        "the model serving a new engine built by toolchain tc-2 on every replica",
        async () => {
          const model = await getModel(client, ns, MODEL);
          const serving = model?.status?.targets?.[0]?.servingEngine;
          const [d] = await listDeployments(client, ns);
          return (
            model?.status?.phase === "Ready" &&
            serving?.toolchain === "tc-2" &&
            serving.key !== oldKey &&
            d?.status?.replicas === 1 &&
            d.status.updatedReplicas === 1 &&
            d.status.readyReplicas === 1
          );
        },
        240_000,
      );
      // The old pod is gone (drained and stopped by the pod runner), and the loop kept going after it.
      await waitFor(
        "only the new runtime pod left",
        async () =>
          (await describePods(client, ns)).split("\n").filter((l) => / Running /.test(l)).length === 1,
        90_000,
      );
      const afterSwitch = answered;
      await waitFor(
        "the client loop answered after the switch",
        async () => answered >= afterSwitch + 3,
        30_000,
      );
    } finally {
      stop = true;
      await loop;
    }

    expect(failures).toEqual([]);
    const builds = await listBuilds(client, ns);
    expect(builds.find((b) => b.spec.toolchain.version === "tc-2")?.status?.phase).toBe("Succeeded");
    const [after] = await listDeployments(client, ns);
    expect(after?.spec.template.spec.containers[0]?.image).toBe("kiln/runtime:tc-2");
  });
});
