import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ListObjectsV2Command } from "@aws-sdk/client-s3";
import type { EngineBuild } from "../../operator/src/api/types.js";
import { KubeClient } from "../../operator/src/controller/kube.js";
import { testCluster, testKubeConfig, testS3Client } from "../cluster/env.js";
import { waitUntil } from "../cluster/wait.js";
import { listBuilds } from "./kube.js";
import { type Stack, startStack } from "./stack.js";

// What every pipeline test file does around its tests: a stack of its own (namespace, store prefix,
// run folder) on the shared control plane, and the checks on what its builds left behind.

export interface PipelineRun {
  /** The namespace models are applied in, unique per run (a cluster kept up starts clean). */
  ns: string;
  /** The prefix under the test bucket the engines go to, unique per run. */
  storePrefix: string;
  /** The store's directory, for a run whose store is file:// (then nothing goes to the bucket). */
  storeDir?: string;
  client: KubeClient;
  stack: Stack;
  stop(): Promise<void>;
}

/**
 * Starts the pod runner and the operator for one test file; `name` prefixes its namespace and store.
 * With `fileStore` the engines go to a file:// store in the run's folder, mounted as a hostPath.
 */
export async function startPipelineRun(
  name: string,
  options: { fileStore?: boolean } = {},
): Promise<PipelineRun> {
  const cluster = testCluster();
  const ns = `${name}-${Date.now().toString(36)}`;
  const storePrefix = `${name}-${Date.now()}`;
  const runDir = await mkdtemp(join(tmpdir(), "kiln-pipeline-"));
  const removeRunDir = () => rm(runDir, { recursive: true, force: true });
  const storeDir = options.fileStore ? join(runDir, "store") : undefined;
  try {
    const stack = await startStack({
      kubeConfig: testKubeConfig(),
      kubeconfigPath: cluster.kubeconfigPath,
      s3: cluster.s3,
      runDir,
      modelNamespaces: [ns],
      toolchainVersion: "tc-1",
      storePrefix,
      ...(storeDir ? { fileStore: storeDir } : {}),
    });
    const stop = async () => {
      await stack.stop();
      await removeRunDir();
    };
    return {
      ns,
      storePrefix,
      ...(storeDir ? { storeDir } : {}),
      client: new KubeClient(testKubeConfig()),
      stack,
      stop,
    };
  } catch (err) {
    await removeRunDir();
    throw err;
  }
}

/** Waits for the EngineBuild owned by `model` to end Failed, and returns it. */
export async function failedBuildOf(run: PipelineRun, model: string): Promise<EngineBuild> {
  let failed: EngineBuild | undefined;
  await waitUntil(
    `EngineBuild of ${model} Failed`,
    async () => {
      failed = (await listBuilds(run.client, run.ns)).find(
        (b) => b.metadata.ownerReferences?.some((r) => r.name === model) && b.status?.phase === "Failed",
      );
      return failed !== undefined;
    },
    { timeoutMs: 120_000, intervalMs: 250 },
  );
  if (!failed) throw new Error(`EngineBuild of ${model}: waited for Failed but found none`);
  return failed;
}

/**
 * The messages of the Warning Events about `build`, one a line, once there is one: the operator
 * records the Event after the status, so a reader that saw the status may be ahead of it.
 */
export async function warningEventsOf(run: PipelineRun, build: EngineBuild): Promise<string> {
  const selector = encodeURIComponent(`involvedObject.name=${build.metadata.name}`);
  let warnings: string[] = [];
  await waitUntil(
    `a Warning Event about EngineBuild ${run.ns}/${build.metadata.name}`,
    async () => {
      const events = await run.client.request<{ items: { type: string; message: string }[] }>(
        "GET",
        `/api/v1/namespaces/${run.ns}/events?fieldSelector=${selector}`,
      );
      warnings = events.items.filter((e) => e.type === "Warning").map((e) => e.message);
      return warnings.length > 0;
    },
    { timeoutMs: 30_000, intervalMs: 250 },
  );
  return warnings.join("\n");
}

/** The run's Failed EngineBuilds. */
export async function failedBuilds(run: PipelineRun): Promise<EngineBuild[]> {
  return (await listBuilds(run.client, run.ns)).filter((b) => b.status?.phase === "Failed");
}

/** Every object the store holds under engines/<key>/ of these builds: empty when none published. */
export async function publishedFilesOf(run: PipelineRun, builds: EngineBuild[]): Promise<string[]> {
  const s3 = testS3Client();
  try {
    const keys: string[] = [];
    for (const build of builds) {
      const listed = await s3.send(
        new ListObjectsV2Command({
          Bucket: testCluster().s3.bucket,
          Prefix: `${run.storePrefix}/engines/${build.spec.key}/`,
        }),
      );
      keys.push(...(listed.Contents ?? []).map((o) => o.Key ?? ""));
    }
    return keys;
  } finally {
    s3.destroy();
  }
}
