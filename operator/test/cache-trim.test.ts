import type { V1Job, V1Node } from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import type { EngineBuild } from "../src/api/types.js";
import { isSubset } from "../src/controller/apply.js";
import { trimJob, trimMetadata, trimNode } from "../src/controller/cache-trim.js";
import { latestJobOf } from "../src/enginebuild/job.js";
import { needsManifest, planBuild } from "../src/enginebuild/reconcile.js";
import { planModel } from "../src/inferencemodel/reconcile.js";
import { runningEngineOf } from "../src/inferencemodel/workload.js";
import { config, firstPlanOf, live, model, NOW, succeeded } from "./fixtures.js";

/** What the API server adds to an object the operator wrote. */
const served = <T extends object>(obj: T): T => {
  const meta = (obj as { metadata?: Record<string, unknown> }).metadata ?? {};
  return {
    ...structuredClone(obj),
    metadata: {
      ...structuredClone(meta),
      resourceVersion: "42",
      creationTimestamp: NOW.toISOString(),
      managedFields: [{ manager: "kiln-operator", operation: "Apply", fieldsV1: { "f:spec": {} } }],
      annotations: {
        ...(meta.annotations as Record<string, string> | undefined),
        "kubectl.kubernetes.io/last-applied-configuration": JSON.stringify(obj),
      },
    },
  };
};

const firstPlan = firstPlanOf(model("m"));
const build: EngineBuild = {
  ...(firstPlan.createBuilds[0] as EngineBuild),
  metadata: { ...(firstPlan.createBuilds[0] as EngineBuild).metadata, uid: "uid-eb", generation: 1 },
};
const observe = (job: V1Job | undefined) => ({
  build: { ...build, status: { phase: "Running" as const, attempts: 1, jobName: job?.metadata?.name } },
  job,
  manifest: { state: "missing" as const },
  terminationMessage: undefined,
  admission: { admitted: true as const },
  config,
  now: NOW,
});
const created = planBuild(observe(undefined)).createJob as V1Job;
const withOwnerUid = (job: V1Job): V1Job => ({
  ...job,
  metadata: {
    ...job.metadata,
    ownerReferences: job.metadata?.ownerReferences?.map((r) => ({ ...r, uid: "uid-eb" })),
  },
});

describe("informer cache transforms", () => {
  it("keeps of a Job everything the EngineBuild reconcile reads, and not its pod template", () => {
    const states: V1Job["status"][] = [
      { active: 1, startTime: NOW },
      { startTime: NOW, conditions: [{ type: "Complete", status: "True" }] },
      {
        startTime: NOW,
        conditions: [{ type: "Failed", status: "True", reason: "DeadlineExceeded", message: "too slow" }],
      },
    ];
    for (const status of states) {
      const full = { ...served(withOwnerUid(created)), status };
      const trimmed = trimJob(structuredClone(full));
      expect(planBuild(observe(trimmed))).toEqual(planBuild(observe(full)));
      expect(needsManifest(build, trimmed)).toBe(needsManifest(build, full));
      expect(latestJobOf(build, [trimmed])?.metadata?.name).toBe(created.metadata?.name);
      expect(trimmed.spec).toBeUndefined();
      expect(trimmed.metadata).not.toHaveProperty("managedFields");
    }
  });

  it("keeps of a Node its name, labels and allocatable (the GPU inventory), not images or annotations", () => {
    const node: V1Node = {
      apiVersion: "v1",
      kind: "Node",
      metadata: {
        name: "gpu-1",
        uid: "u",
        resourceVersion: "7",
        labels: { "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3" },
        annotations: { "csi.volume.kubernetes.io/nodeid": "{}" },
      },
      spec: { podCIDR: "10.0.0.0/24" },
      status: {
        allocatable: { "nvidia.com/gpu": "8", cpu: "96" },
        capacity: { "nvidia.com/gpu": "8" },
        images: [{ names: ["registry/huge:1"], sizeBytes: 1e10 }],
        conditions: [{ type: "Ready", status: "True" }],
      },
    };
    const trimmed = trimNode(served(node));
    expect(trimmed).toEqual({
      apiVersion: "v1",
      kind: "Node",
      metadata: { name: "gpu-1", uid: "u", resourceVersion: "42", labels: node.metadata?.labels },
      status: { allocatable: node.status?.allocatable },
    });
  });

  it("keeps all of a Deployment the operator compares and reads, dropping managedFields and last-applied", () => {
    const desired = planModel({
      model: model("m"),
      revision: "rev1",
      buildsByKey: new Map([[build.spec.key, succeeded(build)]]),
      ownedBuilds: [],
      deployments: [],
      service: undefined,
      config,
      now: NOW,
    }).applyDeployments[0];
    if (!desired) throw new Error("the plan applies no Deployment for a built engine");
    const trimmed = trimMetadata(served(live(desired, 1)));
    expect(isSubset(desired, trimmed)).toBe(true);
    expect(runningEngineOf(trimmed)).toEqual(runningEngineOf(desired));
    expect(trimmed.status).toEqual(live(desired, 1).status);
    expect(trimmed.metadata).not.toHaveProperty("managedFields");
    expect(trimmed.metadata?.annotations ?? {}).not.toHaveProperty(
      "kubectl.kubernetes.io/last-applied-configuration",
    );
  });
});
