import type { V1Deployment, V1Pod } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { EngineBuild, InferenceModel } from "../src/api/types.js";
import type { KubeObject } from "../src/controller/kube.js";
import { DEPLOYMENT, IM_RESOURCE } from "../src/inferencemodel/reconcile.js";
import {
  CONFIG_MAP,
  client,
  configMapText,
  createNamespace,
  deleteNamespace,
  FakeBuilder,
  inferenceModel,
  installCrds,
  operatorEnv,
  paths,
  servesTraffic,
  startTestOperator,
  storeOf,
  type TestOperator,
  Watched,
} from "./cluster-harness.js";

// The toolchain comes from the operator's ConfigMap, not the environment (the environment would
// win over it): a bump is an edit of that ConfigMap, picked up by its watch without a restart.
const {
  KILN_TOOLCHAIN_VERSION: _v,
  KILN_BUILDER_IMAGE: _b,
  KILN_RUNTIME_IMAGE: _r,
  ...baseEnv
} = operatorEnv({
  KILN_MAX_CONCURRENT_BUILDS: "1",
});
const toolchain = (version: string) => ({
  toolchain: { version, builderImage: `kiln/builder:${version}`, runtimeImage: `kiln/runtime:${version}` },
});
const MODELS = ["llama", "qwen", "mistral"];

let ns: string;
let operator: TestOperator;
let builder: FakeBuilder;

beforeAll(async () => {
  await installCrds();
  ns = await createNamespace("toolchain");
  await client.create(CONFIG_MAP, {
    apiVersion: "v1",
    kind: "ConfigMap",
    metadata: { name: "kiln-config", namespace: ns },
    data: configMapText(toolchain("tc-1")),
  } as KubeObject);
  const env = { ...baseEnv, KILN_CONFIG_MAP: `${ns}/kiln-config` };
  builder = new FakeBuilder(ns, storeOf(env));
  await builder.ready();
  operator = await startTestOperator(env);
});

afterAll(async () => {
  await operator?.stop();
  await builder?.stop();
  if (ns) await deleteNamespace(ns);
});

describe("toolchain bump", () => {
  it("rebuilds every model at most the configured builds at once and keeps serving through the rollout", async () => {
    const p = paths(ns);
    const models = await Watched.start<InferenceModel>(p.models);
    const builds = await Watched.start<EngineBuild>(p.builds);
    const pods = await Watched.start<V1Pod & KubeObject>(p.pods);
    const servingToolchain = (m: InferenceModel | undefined) =>
      m?.status?.targets?.[0]?.servingEngine?.toolchain;
    const allReadyOn = (version: string) => (objects: Map<string, InferenceModel>) =>
      MODELS.every((name) => {
        const m = objects.get(`${ns}/${name}`);
        return m?.status?.phase === "Ready" && servingToolchain(m) === version;
      });

    for (const name of MODELS)
      await client.create(
        IM_RESOURCE,
        inferenceModel(ns, name, { model: { source: `hf://org/${name}`, revision: "r1" } }),
      );
    await models.until(allReadyOn("tc-1"), { timeoutMs: 90_000, describe: "every model Ready on tc-1" });
    const buildEventsBefore = builds.events.length;
    const modelEventsBefore = models.events.length;

    const cm = await client.get<KubeObject & { data?: Record<string, string> }>(
      CONFIG_MAP,
      ns,
      "kiln-config",
    );
    await client.replace(CONFIG_MAP, { ...cm, data: configMapText(toolchain("tc-2")) } as KubeObject);
    await models.until(allReadyOn("tc-2"), { timeoutMs: 120_000, describe: "every model Ready on tc-2" });

    // At most one tc-2 build Running at any moment, as the build watch saw them.
    const phases = new Map<string, string | undefined>();
    let mostRunning = 0;
    let queued = 0;
    for (const e of builds.events.slice(buildEventsBefore)) {
      if (e.object.spec.toolchain.version !== "tc-2") continue;
      phases.set(e.object.metadata.name ?? "", e.type === "DELETED" ? undefined : e.object.status?.phase);
      if (e.object.status?.phase === "Queued") queued++;
      mostRunning = Math.max(mostRunning, [...phases.values()].filter((ph) => ph === "Running").length);
    }
    expect(phases.size).toBe(MODELS.length);
    expect(mostRunning).toBe(1);
    expect(queued).toBeGreaterThan(0);
    // The models themselves said they were queued, with their place.
    expect(
      models.events
        .slice(modelEventsBefore)
        .some((e) =>
          e.object.status?.conditions?.some(
            (c) => c.reason === "Queued" && /position \d/.test(c.message ?? ""),
          ),
        ),
    ).toBe(true);

    // Replaying every pod event: once a model served, it never had zero serving pods.
    const serving = new Map<string, V1Pod>();
    const started = new Set<string>();
    for (const e of pods.events) {
      const uid = e.object.metadata?.uid ?? "";
      if (e.type === "DELETED" || !servesTraffic(e.object)) serving.delete(uid);
      else serving.set(uid, e.object);
      for (const name of MODELS) {
        const count = [...serving.values()].filter(
          (pod) => pod.metadata?.labels?.["kiln.dev/model"] === name,
        ).length;
        if (count > 0) started.add(name);
        else if (started.has(name))
          throw new Error(`${name} had no serving pod after ${e.type} of ${e.object.metadata?.name}`);
      }
    }
    expect([...started].sort()).toEqual([...MODELS].sort());

    // Every Deployment now runs the new runtime image with the tc-2 engine, and the tc-1 builds
    // (no longer desired nor running anywhere) are gone.
    for (const name of MODELS) {
      const m = models.objects.get(`${ns}/${name}`);
      const build = builds.list().find((b) => b.spec.key === m?.status?.targets?.[0]?.servingEngine?.key);
      expect(build?.spec.toolchain).toEqual({ version: "tc-2", builderImage: "kiln/builder:tc-2" });
    }
    const deployments = await client.list<V1Deployment & KubeObject>(DEPLOYMENT, ns);
    expect(deployments.items.map((d) => d.spec?.template.spec?.containers[0]?.image)).toEqual(
      MODELS.map(() => "kiln/runtime:tc-2"),
    );
    await builds.until((o) => [...o.values()].every((b) => b.spec.toolchain.version === "tc-2"), {
      timeoutMs: 30_000,
      describe: "tc-1 builds released",
    });
    for (const w of [models, builds, pods]) w.stop();
  });
});
