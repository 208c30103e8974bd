import { readFile } from "node:fs/promises";
import { join } from "node:path";
import type { V1Pod } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { enginePaths, validateManifest } from "../../lib/manifest.js";
import { IM_RESOURCE } from "../../operator/src/inferencemodel/reconcile.js";
import { STORE_VOLUME_NAME } from "../../operator/src/store-volume.js";
import { waitUntil } from "../cluster/wait.js";
import { serviceUrl } from "./endpoint.js";
import { describePods, getModel, listBuilds } from "./kube.js";
import { tinyInferenceModel, writeTinyModel } from "./model.js";
import { type PipelineRun, startPipelineRun } from "./pipeline-run.js";

// A file:// store end to end: the chart's values name the store's directory as a hostPath volume,
// the operator mounts it into the build Job and the runtime pods, the real builder publishes the
// engine there, the real runtime loads it from there and answers a completion.

let run: PipelineRun;
let storeDir: string;

beforeAll(async () => {
  run = await startPipelineRun("file-store", { fileStore: true });
  storeDir = run.storeDir ?? "";
  await writeTinyModel(run.stack.claimsDir);
});

afterAll(async () => {
  await run?.stop();
});

async function waitFor(what: string, probe: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  try {
    await waitUntil(what, probe, { timeoutMs, intervalMs: 250 });
  } catch (err) {
    const pods = await describePods(run.client, run.ns).catch((e: Error) => e.message);
    throw new Error(`${(err as Error).message}\npods:\n${pods}`);
  }
}

const podsOf = async (component: string) =>
  (
    await run.client.request<{ items: V1Pod[] }>(
      "GET",
      `/api/v1/namespaces/${run.ns}/pods?labelSelector=${encodeURIComponent(`app.kubernetes.io/component=${component}`)}`,
    )
  ).items;

describe("a file:// store on a hostPath volume", () => {
  test("the builder publishes the engine into the mounted directory and the runtime serves it from there", async () => {
    expect(storeDir).not.toBe("");
    await run.client.create(IM_RESOURCE, await tinyInferenceModel("tiny", run.ns));

    await waitFor(
      "EngineBuild Succeeded",
      async () => (await listBuilds(run.client, run.ns)).some((b) => b.status?.phase === "Succeeded"),
      180_000,
    );
    const [build] = await listBuilds(run.client, run.ns);
    const key = build?.spec.key ?? "";
    expect(build?.status?.artifact?.uri).toBe(`file://${storeDir}/${enginePaths(key).engine}`);
    const manifest = validateManifest(
      JSON.parse(await readFile(join(storeDir, enginePaths(key).manifest), "utf8")),
      key,
    );
    expect(manifest.ok && manifest.value.sha256).toBe(build?.status?.artifact?.sha256);

    await waitFor(
      "InferenceModel Ready",
      async () => (await getModel(run.client, run.ns, "tiny"))?.status?.phase === "Ready",
      180_000,
    );
    const [builder] = await podsOf("builder");
    const [runtime] = await podsOf("runtime");
    for (const [pod, readOnly] of [
      [builder, undefined],
      [runtime, true],
    ] as const) {
      expect(pod?.spec?.volumes).toContainEqual({
        name: STORE_VOLUME_NAME,
        hostPath: { path: storeDir, type: "DirectoryOrCreate" },
      });
      expect(pod?.spec?.containers[0]?.volumeMounts).toContainEqual({
        name: STORE_VOLUME_NAME,
        mountPath: storeDir,
        ...(readOnly ? { readOnly } : {}),
      });
    }

    let url: string | undefined;
    await waitFor(
      "a ready endpoint behind the Service",
      async () => {
        url = await serviceUrl(run.client, run.ns, "tiny");
        return url !== undefined;
      },
      30_000,
    );
    const res = await fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "tiny", prompt: "hello world", max_tokens: 4, temperature: 0 }),
    });
    const body = (await res.json()) as { usage?: { completion_tokens: number } };
    expect(res.status, JSON.stringify(body)).toBe(200);
    expect(body.usage?.completion_tokens).toBeGreaterThan(0);
  });
});
