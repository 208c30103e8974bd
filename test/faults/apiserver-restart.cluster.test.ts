// kube-apiserver restarted while the operator reconciles: its watches end and its requests are
// refused for a few seconds. The operator must re-establish every watch (its resync is 10 minutes
// away, so a change only reaches it through a watch) and lose none of the changes made around the
// restart. The test owns a small control plane of its own, so restarting its apiserver cannot
// disturb the shared cluster other test files use.

import { createWriteStream } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { KubeConfig, type V1Job, Watch } from "@kubernetes/client-node";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import type { EngineBuildSpec } from "../../operator/src/api/enginebuild.js";
import type { InferenceModel } from "../../operator/src/api/types.js";
import { loadConfig } from "../../operator/src/config.js";
import { KubeClient, type KubeObject } from "../../operator/src/controller/kube.js";
import { EB_RESOURCE, IM_RESOURCE } from "../../operator/src/inferencemodel/reconcile.js";
import { type Operator, startOperator } from "../../operator/src/main.js";
import { inferenceModel, NAMESPACE, operatorEnv, storeOf } from "../../operator/test/cluster-harness.js";
import { type ClusterHandle, startCluster } from "../cluster/launcher.js";
import { publishStandInEngine } from "../fixtures/stand-in-engine.js";

let cluster: ClusterHandle;
let kc: KubeConfig;
let client: KubeClient;

beforeAll(async () => {
  cluster = await startCluster({
    gpuNodes: [{ name: "kiln-h100-solo", product: "NVIDIA-H100-80GB-HBM3", smArch: "sm_90", gpus: 8 }],
    log: () => undefined,
  });
  kc = new KubeConfig();
  kc.loadFromFile(cluster.kubeconfigPath);
  client = new KubeClient(kc);
  const CRD = {
    apiVersion: "apiextensions.k8s.io/v1",
    kind: "CustomResourceDefinition",
    plural: "customresourcedefinitions",
    namespaced: false,
  };
  for (const file of ["inferencemodels.kiln.dev.yaml", "enginebuilds.kiln.dev.yaml"]) {
    const text = await readFile(new URL(`../../crds/${file}`, import.meta.url), "utf8");
    for (const doc of parseAllDocuments(text)) await client.apply(CRD, doc.toJSON() as KubeObject);
  }
});
afterAll(async () => {
  await cluster?.stop();
});

/** Polls `read` until `done` holds or the deadline passes (the API itself is what comes and goes). */
async function eventually<T>(
  read: () => Promise<T>,
  done: (v: T) => boolean,
  describe: string,
  timeoutMs = 60_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: T | undefined;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      last = await read();
      if (done(last)) return last;
    } catch (err) {
      lastError = err;
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error(
    `${describe}: not reached within ${timeoutMs} ms; last ${JSON.stringify(last)} ${lastError ?? ""}`,
  );
}

describe("faults: kube-apiserver restart", () => {
  it("re-establishes its watches and reconciles the changes made around an apiserver restart", async () => {
    // The apiserver of this 2-core test machine takes longer to stop and start than the default
    // renew deadline (10 s); past it a leader steps down and its pod restarts, which is the kill
    // test's ground. Here the same process must ride the outage out, so the lease outlasts it.
    const env = operatorEnv({
      KILN_LEASE_DURATION_SECONDS: "120",
      KILN_LEASE_RENEW_DEADLINE_SECONDS: "90",
      KILN_LEASE_RETRY_PERIOD_SECONDS: "2",
    });
    const store = storeOf(env);
    // CRDs must be served before the namespace's models can be created.
    await eventually(
      () => client.list(IM_RESOURCE),
      () => true,
      "InferenceModels served",
    );
    const ns = `restart-${Date.now().toString(36)}`;
    await client.create(NAMESPACE, { apiVersion: "v1", kind: "Namespace", metadata: { name: ns } });

    // The builder stand-in on this cluster: the Job's engine is in storage before kwok completes it.
    // Its watch ends with the apiserver too; it starts another after the restart (an initial list
    // replays every Job as ADDED, and writing an engine twice is harmless).
    let restarted: Promise<void> | undefined;
    const standIn = () =>
      new Watch(kc).watch(
        `/apis/batch/v1/namespaces/${ns}/jobs`,
        {},
        (type, job: V1Job) => {
          if (type !== "ADDED") return;
          const spec = JSON.parse(
            job.spec?.template.spec?.containers[0]?.env?.find((v) => v.name === "KILN_BUILD_SPEC")?.value ??
              "{}",
          ) as EngineBuildSpec;
          void publishStandInEngine(store, spec).then(() => {
            // Mid-reconcile: the build runs, the Deployment is still to come.
            restarted ??= cluster.restartApiserver();
          });
        },
        () => undefined,
      );
    const watches = [await standIn()];
    let lost = false;
    const operator: Operator = await startOperator({
      config: loadConfig({ ...env, POD_NAME: "kiln-operator-restart" }),
      kubeConfig: kc,
      log: pino({ level: "debug" }, createWriteStream(join(cluster.logDir, "operator.log"))),
      onLostLeadership: () => {
        lost = true;
      },
    });
    try {
      await client.create(IM_RESOURCE, inferenceModel(ns, "first"));
      await eventually(
        async () => restarted !== undefined,
        (began) => began,
        "the apiserver restart began",
      );
      await restarted;
      watches.push(await standIn());
      // Right after the restart: a spec change to the model mid-build and a brand-new model.
      await client.apply(IM_RESOURCE, { ...inferenceModel(ns, "first", { engine: { maxBatchSize: 4 } }) });
      await client.create(IM_RESOURCE, inferenceModel(ns, "second", { engine: { maxBatchSize: 2 } }));

      // Each model serves an engine built from its latest spec: no change was lost.
      for (const [name, maxBatchSize] of [
        ["first", 4],
        ["second", 2],
      ] as const) {
        const m = await eventually(
          () => client.get<InferenceModel>(IM_RESOURCE, ns, name),
          (m) => m?.status?.phase === "Ready" && m.status.observedGeneration === m.metadata.generation,
          `InferenceModel ${ns}/${name} Ready at its latest generation after the restart`,
        );
        const served = m?.status?.targets?.[0]?.servingEngine?.build ?? "";
        const build = await client.get<KubeObject & { spec: EngineBuildSpec }>(EB_RESOURCE, ns, served);
        expect(build?.spec.engine.maxBatchSize).toBe(maxBatchSize);
      }
      expect(lost).toBe(false);
      expect(operator.isLeader()).toBe(true);
    } finally {
      for (const w of watches) w.abort();
      await operator.stop();
    }
  });
});
