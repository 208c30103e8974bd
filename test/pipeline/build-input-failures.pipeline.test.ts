import { cp, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { IM_RESOURCE } from "../../operator/src/inferencemodel/reconcile.js";
import { testCluster, testS3Client } from "../cluster/env.js";
import { SECRET } from "../pod-runner/resources.js";
import {
  s3CredentialsSecret,
  TINY_MODEL_CLAIM,
  tinyInferenceModel,
  uploadModel,
  writeTinyModel,
} from "./model.js";
import {
  failedBuildOf,
  failedBuilds,
  type PipelineRun,
  publishedFilesOf,
  startPipelineRun,
  warningEventsOf,
} from "./pipeline-run.js";

// The failures that come from the model itself, with the real builder process run by the pod
// runner: credentials the S3 server refuses, and an architecture the compiler does not support.
// Both are permanent (the builder exits 2 and the Job fails at once instead of retrying), the
// reason reaches the EngineBuild's status and a Warning Event, and nothing is published.

let run: PipelineRun;
let modelPrefix: string;

beforeAll(async () => {
  run = await startPipelineRun("input-failures");
  modelPrefix = `models/${run.storePrefix}/tiny-llama`;
  const dir = await writeTinyModel(run.stack.claimsDir);
  const s3 = testS3Client();
  try {
    await uploadModel(s3, testCluster().s3.bucket, modelPrefix, dir);
  } finally {
    s3.destroy();
  }
  // The same weights under a config.json that names an architecture Kiln does not compile.
  const gpt2 = join(run.stack.claimsDir, TINY_MODEL_CLAIM, "gpt2");
  await cp(dir, gpt2, { recursive: true });
  const config = JSON.parse(await readFile(join(gpt2, "config.json"), "utf8"));
  await writeFile(
    join(gpt2, "config.json"),
    JSON.stringify({ ...config, architectures: ["GPT2LMHeadModel"], model_type: "gpt2" }),
  );
});

afterAll(async () => {
  await run?.stop();
});

describe("a model the builder cannot read or compile ends Failed at once, with the reason", () => {
  test("an s3:// source whose credentials Secret holds keys the S3 server refuses", async () => {
    await run.client.create(
      SECRET,
      s3CredentialsSecret("wrong-keys", run.ns, {
        accessKeyId: "AKIAWRONGWRONG",
        secretAccessKey: "not-the-key",
      }),
    );
    const model = await tinyInferenceModel("bad-credentials", run.ns);
    model.spec.model = {
      source: `s3://${testCluster().s3.bucket}/${modelPrefix}`,
      credentialsSecret: "wrong-keys",
    };
    await run.client.create(IM_RESOURCE, model);
    const build = await failedBuildOf(run, "bad-credentials");
    // Permanent: the first attempt's exit 2 failed the Job; no second attempt was started.
    expect(build.status?.attempts).toBe(1);
    expect(build.status?.message).toMatch(
      /InvalidAccessKeyId|XAdminUserNotFound|SignatureDoesNotMatch|AccessDenied/,
    );
    expect(build.status?.message).toMatch(/credentialsSecret/);
    expect(await warningEventsOf(run, build)).toMatch(/credentialsSecret/);
  });

  test("a checkpoint of an unsupported architecture (GPT2LMHeadModel)", async () => {
    const model = await tinyInferenceModel("unsupported-arch", run.ns);
    model.spec.model = { source: `pvc://${TINY_MODEL_CLAIM}/gpt2` };
    await run.client.create(IM_RESOURCE, model);
    const build = await failedBuildOf(run, "unsupported-arch");
    expect(build.status?.attempts).toBe(1);
    expect(build.status?.message).toMatch(/GPT2LMHeadModel.*not supported/);
    expect(await warningEventsOf(run, build)).toMatch(/GPT2LMHeadModel/);
    // Where it stopped, from the builder's last progress report: past the fetch, at the compile.
    expect(build.status?.progress).toMatchObject({
      phase: expect.stringMatching(/^(fetch|compile)$/),
      percent: expect.any(Number),
    });
    expect(build.status?.progress?.percent).toBeGreaterThanOrEqual(20);
  });

  test("no engine or manifest was published for either", async () => {
    const failed = await failedBuilds(run);
    expect(failed).toHaveLength(2);
    expect(await publishedFilesOf(run, failed)).toEqual([]);
  });
});
