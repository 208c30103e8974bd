import { describe, expect, it } from "vitest";
import { ANNOTATIONS } from "../src/api/labels.js";
import type { EngineBuild, InferenceModel } from "../src/api/types.js";
import { type ModelObservation, planModel } from "../src/inferencemodel/reconcile.js";
import { config, live, model, NOW, succeeded } from "./fixtures.js";

const observe = (m: InferenceModel, over: Partial<ModelObservation> = {}): ModelObservation => ({
  model: m,
  revision: "rev1",
  buildsByKey: new Map(),
  ownedBuilds: [],
  deployments: [],
  service: undefined,
  config,
  now: NOW,
  ...over,
});

const byKey = (...builds: EngineBuild[]) => new Map(builds.map((b) => [b.spec.key, b]));
const condition = (m: { conditions?: { type: string; status: string; reason: string }[] }, type: string) =>
  m.conditions?.find((c) => c.type === type);

describe("InferenceModel plan", () => {
  it("builds only for GPU products some node offers and says why the others wait", () => {
    const m = model("wide", { gpu: { products: ["H100", "H200"] } });
    const plan = planModel(observe(m, { gpusPerNode: { H100: 8 } }));
    expect(plan.createBuilds.map((b) => b.spec.target.product)).toEqual(["H100"]);
    expect(plan.status.targets).toContainEqual({
      product: "H200",
      message: "no node offers H200; its engine is built once one joins",
    });

    const none = planModel(observe(m, { gpusPerNode: {} }));
    expect(none.createBuilds).toEqual([]);
    expect(none.status.phase).toBe("Pending");
    expect(condition(none.status, "EngineReady")).toMatchObject({
      status: "False",
      reason: "NoMatchingNodes",
    });
  });

  it("creates the EngineBuild for the desired key, owned (not controlled) by the model, and waits", () => {
    const plan = planModel(observe(model("llama")));
    expect(plan.createBuilds).toHaveLength(1);
    const build = plan.createBuilds[0] as EngineBuild;
    expect(build.metadata.name).toMatch(/^tinyllama-1-1b-chat-v1-0-[0-9a-f]{10}$/);
    expect(build.metadata.ownerReferences).toEqual([
      { apiVersion: "kiln.dev/v1alpha1", kind: "InferenceModel", name: "llama", uid: "uid-llama" },
    ]);
    expect(build.spec.model.revision).toBe("rev1");
    expect(plan.applyDeployments).toEqual([]);
    expect(plan.service).toBeUndefined();
    expect(plan.status.phase).toBe("Building");
    expect(plan.status.model).toEqual({
      source: "hf://TinyLlama/TinyLlama-1.1B-Chat-v1.0",
      revision: "rev1",
    });
    expect(condition(plan.status, "EngineReady")).toMatchObject({ status: "False", reason: "BuildPending" });
  });

  it("adopts the EngineBuild another model with the same key created, instead of a second one", () => {
    const first = planModel(observe(model("a"))).createBuilds[0] as EngineBuild;
    const plan = planModel(observe(model("b"), { buildsByKey: byKey(first) }));
    expect(plan.createBuilds).toEqual([]);
    expect(plan.adoptBuilds).toHaveLength(1);
    expect(plan.adoptBuilds[0]?.metadata.ownerReferences?.map((r) => r.name)).toEqual(["a", "b"]);
  });

  it("deploys the built engine with its uri and sha256 in env and the pod-template annotations, plus a Service", () => {
    const m = model("llama", { runtime: { replicas: 2 } });
    const build = succeeded(planModel(observe(m)).createBuilds[0] as EngineBuild);
    const plan = planModel(observe(m, { buildsByKey: byKey(build), ownedBuilds: [build] }));
    expect(plan.applyDeployments).toHaveLength(1);
    const d = plan.applyDeployments[0];
    const pod = d?.spec?.template;
    expect(d?.metadata?.name).toBe("llama-h100");
    expect(d?.spec?.replicas).toBe(2);
    expect(d?.spec?.strategy?.rollingUpdate).toEqual({ maxSurge: 1, maxUnavailable: 0 });
    expect(pod?.metadata?.annotations?.[ANNOTATIONS.engineKey]).toBe(build.spec.key);
    expect(pod?.metadata?.annotations?.[ANNOTATIONS.engineSha256]).toBe("a".repeat(64));
    const container = pod?.spec?.containers[0];
    expect(container?.env).toContainEqual({ name: "KILN_ENGINE_URI", value: build.status?.artifact?.uri });
    expect(container?.env).toContainEqual({ name: "KILN_ENGINE_SHA256", value: "a".repeat(64) });
    expect(container?.resources?.limits).toEqual({ "nvidia.com/gpu": "1" });
    expect(container?.readinessProbe?.httpGet?.path).toBe("/readyz");
    expect(pod?.spec?.nodeSelector).toEqual({ "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3" });
    expect(plan.service?.spec?.selector).toEqual({ "kiln.dev/model": "llama" });
    expect(plan.status.phase).toBe("Deploying");
    expect(plan.status.endpoint).toBe("http://llama.ml.svc:8000");
  });

  it("is Ready once the Deployment has rolled out the desired engine", () => {
    const m = model("llama");
    const build = succeeded(planModel(observe(m)).createBuilds[0] as EngineBuild);
    const first = planModel(observe(m, { buildsByKey: byKey(build), ownedBuilds: [build] }));
    const deployment = live(first.applyDeployments[0] ?? {}, 1);
    const plan = planModel(
      observe(m, { buildsByKey: byKey(build), ownedBuilds: [build], deployments: [deployment] }),
    );
    expect(plan.status.phase).toBe("Ready");
    expect(plan.status.ready).toBe("1/1");
    expect(plan.status.engine).toBe(build.spec.key.slice(0, 10));
    expect(plan.status.targets?.[0]?.servingEngine?.key).toBe(build.spec.key);
    expect(condition(plan.status, "Ready")).toMatchObject({ status: "True" });
  });

  it("keeps serving the old engine while a toolchain bump rebuilds, then rolls to the new one", () => {
    const m = model("llama");
    const oldBuild = succeeded(planModel(observe(m)).createBuilds[0] as EngineBuild);
    const oldDeployment = live(
      planModel(observe(m, { buildsByKey: byKey(oldBuild), ownedBuilds: [oldBuild] })).applyDeployments[0] ??
        {},
      1,
    );
    const bumped = { ...config, toolchain: { ...config.toolchain, version: "0.2.0" } };

    const building = planModel(
      observe(m, {
        config: bumped,
        buildsByKey: byKey(oldBuild),
        ownedBuilds: [oldBuild],
        deployments: [oldDeployment],
      }),
    );
    const newBuild = building.createBuilds[0] as EngineBuild;
    expect(newBuild.spec.key).not.toBe(oldBuild.spec.key);
    // The Deployment is re-applied with the old engine, unchanged, and the old build is kept.
    expect(building.applyDeployments[0]?.spec?.template?.metadata?.annotations?.[ANNOTATIONS.engineKey]).toBe(
      oldBuild.spec.key,
    );
    expect(building.deleteBuilds).toEqual([]);
    expect(building.status.phase).toBe("Building");
    expect(condition(building.status, "Available")).toMatchObject({ status: "True" });

    const built = succeeded({
      ...newBuild,
      metadata: { ...newBuild.metadata, ownerReferences: newBuild.metadata.ownerReferences },
    });
    const rolling = planModel(
      observe(
        { ...m, status: building.status },
        {
          config: bumped,
          buildsByKey: byKey(oldBuild, built),
          ownedBuilds: [oldBuild, built],
          deployments: [oldDeployment],
        },
      ),
    );
    expect(rolling.applyDeployments[0]?.spec?.template?.metadata?.annotations?.[ANNOTATIONS.engineKey]).toBe(
      built.spec.key,
    );
    // Until the new pods are rolled out the old engine is what serves.
    expect(rolling.status.targets?.[0]?.servingEngine?.key).toBe(oldBuild.spec.key);
    expect(rolling.status.phase).toBe("Deploying");

    const newDeployment = live(rolling.applyDeployments[0] ?? {}, 1);
    const done = planModel(
      observe(
        { ...m, status: rolling.status },
        {
          config: bumped,
          buildsByKey: byKey(oldBuild, built),
          ownedBuilds: [oldBuild, built],
          deployments: [newDeployment],
        },
      ),
    );
    expect(done.status.phase).toBe("Ready");
    expect(done.status.targets?.[0]?.servingEngine?.key).toBe(built.spec.key);
    // The old engine's build had only this owner: it goes now that nothing runs it.
    expect(done.deleteBuilds).toEqual([oldBuild.metadata.name]);
  });

  it("stays on the old engine as Degraded when the new build fails", () => {
    const m = model("llama");
    const oldBuild = succeeded(planModel(observe(m)).createBuilds[0] as EngineBuild);
    const oldDeployment = live(
      planModel(observe(m, { buildsByKey: byKey(oldBuild), ownedBuilds: [oldBuild] })).applyDeployments[0] ??
        {},
      1,
    );
    const changed = model("llama", { engine: { precision: "fp16" } });
    const newBuild = planModel(observe(changed, { deployments: [oldDeployment] }))
      .createBuilds[0] as EngineBuild;
    const failed: EngineBuild = { ...newBuild, status: { phase: "Failed", message: "BackoffLimitExceeded" } };
    const plan = planModel(
      observe(changed, {
        buildsByKey: byKey(oldBuild, failed),
        ownedBuilds: [oldBuild, failed],
        deployments: [oldDeployment],
      }),
    );
    expect(plan.status.phase).toBe("Degraded");
    expect(plan.applyDeployments[0]?.spec?.template?.metadata?.annotations?.[ANNOTATIONS.engineKey]).toBe(
      oldBuild.spec.key,
    );
    expect(plan.deleteDeployments).toEqual([]);
    expect(plan.events.find((e) => e.reason === "BuildFailed")?.type).toBe("Warning");
  });

  it("releases a shared build it no longer needs without deleting it", () => {
    const a = model("a");
    const shared = planModel(observe(a)).createBuilds[0] as EngineBuild;
    const both: EngineBuild = {
      ...shared,
      metadata: {
        ...shared.metadata,
        ownerReferences: [
          ...(shared.metadata.ownerReferences ?? []),
          { apiVersion: "kiln.dev/v1alpha1", kind: "InferenceModel", name: "b", uid: "uid-b" },
        ],
      },
    };
    const moved = model("a", { engine: { maxSeqLen: 8192 } });
    const plan = planModel(observe(moved, { buildsByKey: byKey(both), ownedBuilds: [both] }));
    expect(plan.deleteBuilds).toEqual([]);
    expect(plan.releaseBuilds[0]?.metadata.ownerReferences?.map((r) => r.name)).toEqual(["b"]);
  });

  it("builds one engine and runs one Deployment per GPU product, each on its own nodes", () => {
    const m = model("llama", { gpu: { products: ["H100", "L4"] } });
    const builds = planModel(observe(m)).createBuilds.map(succeeded);
    expect(new Set(builds.map((b) => b.spec.key)).size).toBe(2);
    const plan = planModel(observe(m, { buildsByKey: byKey(...builds), ownedBuilds: builds }));
    expect(
      plan.applyDeployments.map((d) => [d.metadata?.name, d.spec?.template?.spec?.nodeSelector]),
    ).toEqual([
      ["llama-h100", { "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3" }],
      ["llama-l4", { "nvidia.com/gpu.product": "NVIDIA-L4" }],
    ]);
  });

  it("fails pre-flight with no build when weights and KV cache cannot fit the GPU", () => {
    const big = model("big", {
      model: {
        source: "hf://meta-llama/Llama-3-70B",
        size: { parameters: 70e9, layers: 80, kvHeads: 8, headDim: 128 },
      },
      gpu: { products: ["L4"] },
    });
    const plan = planModel(observe(big));
    expect(plan.createBuilds).toEqual([]);
    expect(plan.status.phase).toBe("Failed");
    const engineReady = plan.status.conditions?.find((c) => c.type === "EngineReady");
    expect(engineReady).toMatchObject({ status: "False", reason: "PreflightFailed" });
    expect(engineReady?.message).toMatch(/on L4 .* weights need 140\.0 GB/);
  });

  it("waits in Pending, creating nothing, while the revision cannot be resolved", () => {
    const plan = planModel(
      observe(model("llama"), { revision: undefined, revisionError: "hub unreachable" }),
    );
    expect(plan.createBuilds).toEqual([]);
    expect(plan.status.phase).toBe("Pending");
    expect(plan.status.message).toBe("hub unreachable");
  });

  it("deletes the Deployment of a GPU product no longer listed", () => {
    const m = model("llama", { gpu: { products: ["H100", "L4"] } });
    const builds = planModel(observe(m)).createBuilds.map(succeeded);
    const deployments = planModel(
      observe(m, { buildsByKey: byKey(...builds), ownedBuilds: builds }),
    ).applyDeployments.map((d) => live(d, 1));
    const plan = planModel(
      observe(model("llama"), { buildsByKey: byKey(...builds), ownedBuilds: builds, deployments }),
    );
    expect(plan.deleteDeployments).toEqual(["llama-l4"]);
  });

  it("records conditions with observedGeneration and emits an Event only on a transition", () => {
    const m = model("llama");
    const first = planModel(observe(m));
    expect(first.status.observedGeneration).toBe(1);
    expect(first.events.map((e) => e.reason)).toContain("BuildPending");
    const again = planModel(observe({ ...m, status: first.status }));
    expect(again.events).toEqual([]);
    expect(again.status.conditions).toEqual(first.status.conditions);
  });
});
