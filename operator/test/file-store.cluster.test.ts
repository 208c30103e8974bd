import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { V1Deployment, V1Job, V1Pod } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { EngineBuild, InferenceModel } from "../src/api/types.js";
import { loadConfig } from "../src/config.js";
import { isSubset } from "../src/controller/apply.js";
import type { KubeObject } from "../src/controller/kube.js";
import { IM_RESOURCE } from "../src/inferencemodel/reconcile.js";
import { desiredDeployment, runningEngineOf } from "../src/inferencemodel/workload.js";
import { STORE_VOLUME_NAME } from "../src/store-volume.js";
import {
  client,
  createNamespace,
  deleteNamespace,
  FakeBuilder,
  inferenceModel,
  installCrds,
  operatorEnv,
  paths,
  startTestOperator,
  storeOf,
  type TestOperator,
  Watched,
} from "./cluster-harness.js";

// A file:// store on a real control plane: the operator puts the store's volume into the build Job
// (read-write) and the runtime Deployment (read-only), the API server accepts both pod templates as
// they are (no field it rewrites, so no apply loop), and the pods created from them carry the mount.
// kwok runs no containers: the stand-in builder publishes into the directory the volume names.

let operator: TestOperator;
let ns: string;
let storeDir: string;
let env: Record<string, string>;

beforeAll(async () => {
  storeDir = await mkdtemp(join(tmpdir(), "kiln-file-store-"));
  env = operatorEnv({
    KILN_STORE_URI: `file://${storeDir}`,
    KILN_STORE_VOLUME: JSON.stringify({ hostPath: { path: storeDir, type: "DirectoryOrCreate" } }),
  });
  delete env.KILN_STORE_ENDPOINT;
  await installCrds();
  operator = await startTestOperator(env);
  ns = await createNamespace("file-store");
});

afterAll(async () => {
  await operator?.stop();
  if (ns) await deleteNamespace(ns);
  if (storeDir) await rm(storeDir, { recursive: true, force: true });
});

const volume = (path: string) => ({
  name: STORE_VOLUME_NAME,
  hostPath: { path, type: "DirectoryOrCreate" },
});

describe("a file:// object store on its volume", () => {
  it("is mounted read-write in the build Job and read-only in the runtime pods, and the model gets Ready", async () => {
    const p = paths(ns);
    const builder = new FakeBuilder(ns, storeOf(env));
    await builder.ready();
    const [models, builds, jobs, deployments, pods] = await Promise.all([
      Watched.start<InferenceModel>(p.models),
      Watched.start<EngineBuild>(p.builds),
      Watched.start<V1Job & KubeObject>(p.jobs),
      Watched.start<V1Deployment & KubeObject>(p.deployments),
      Watched.start<V1Pod & KubeObject>(p.pods),
    ]);
    try {
      await client.create(IM_RESOURCE, inferenceModel(ns, "local"));
      await models.until((all) => all.get(`${ns}/local`)?.status?.phase === "Ready", {
        timeoutMs: 60_000,
        describe: `InferenceModel ${ns}/local Ready`,
      });

      const [build] = builds.list();
      expect(build?.status?.artifact?.uri).toBe(`file://${storeDir}/engines/${build?.spec.key}/engine.kiln`);
      const podsOf = (component: string) =>
        pods.list().filter((pod) => pod.metadata?.labels?.["app.kubernetes.io/component"] === component);

      const [job] = jobs.list();
      for (const spec of [job?.spec?.template.spec, ...podsOf("builder").map((pod) => pod.spec)]) {
        expect(spec?.volumes).toContainEqual(volume(storeDir));
        expect(spec?.containers[0]?.volumeMounts).toContainEqual({
          name: STORE_VOLUME_NAME,
          mountPath: storeDir,
        });
      }

      const [deployment] = deployments.list();
      const runtimePods = podsOf("runtime");
      expect(runtimePods.length).toBeGreaterThan(0);
      for (const spec of [deployment?.spec?.template.spec, ...runtimePods.map((pod) => pod.spec)]) {
        expect(spec?.volumes).toContainEqual(volume(storeDir));
        expect(spec?.containers[0]?.volumeMounts).toContainEqual({
          name: STORE_VOLUME_NAME,
          mountPath: storeDir,
          readOnly: true,
        });
      }
      // What the operator would apply now is what the API server holds: it will not rewrite it.
      const model = models.objects.get(`${ns}/local`);
      const engine = runningEngineOf(deployment);
      if (!model || !engine || !deployment) throw new Error("no model, engine or Deployment");
      expect(isSubset(desiredDeployment(model, "H100", engine, loadConfig(env)), deployment)).toBe(true);
    } finally {
      for (const w of [models, builds, jobs, deployments, pods]) w.stop();
      await builder.stop();
    }
  });
});
