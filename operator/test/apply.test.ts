import { describe, expect, it } from "vitest";
import { applyChild, isSubset, ownerReference } from "../src/controller/apply.js";
import type { EventSink } from "../src/controller/events.js";
import type { KubeObject, ResourceType } from "../src/controller/kube.js";

const DEPLOYMENT: ResourceType = {
  apiVersion: "apps/v1",
  kind: "Deployment",
  plural: "deployments",
  namespaced: true,
};

describe("isSubset (semantic diff)", () => {
  it("ignores fields the API server added", () => {
    const desired = {
      spec: { replicas: 2, template: { spec: { containers: [{ name: "c", image: "i" }] } } },
    };
    const live = {
      metadata: { resourceVersion: "9", managedFields: [] },
      spec: {
        replicas: 2,
        progressDeadlineSeconds: 600,
        template: { spec: { containers: [{ name: "c", image: "i", imagePullPolicy: "IfNotPresent" }] } },
      },
      status: { readyReplicas: 2 },
    };
    expect(isSubset(desired, live)).toBe(true);
  });

  it("sees a changed value, a missing field and a changed list length", () => {
    expect(isSubset({ spec: { replicas: 3 } }, { spec: { replicas: 2 } })).toBe(false);
    expect(isSubset({ spec: { paused: false } }, { spec: {} })).toBe(false);
    expect(isSubset({ a: [1, 2] }, { a: [1, 2, 3] })).toBe(false);
  });

  it("compares int-or-string values by their spelling", () => {
    expect(isSubset({ maxSurge: 1 }, { maxSurge: "1" })).toBe(true);
  });
});

describe("applyChild", () => {
  const owner: KubeObject = {
    apiVersion: "kiln.dev/v1alpha1",
    kind: "InferenceModel",
    metadata: { name: "m", uid: "u1" },
  };
  const desired: KubeObject = {
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: { name: "m", namespace: "ns" },
  };

  const harness = () => {
    const applied: KubeObject[] = [];
    const events: string[] = [];
    const client = {
      apply: async <T extends KubeObject>(_rt: ResourceType, obj: T) => {
        applied.push(obj);
        return obj;
      },
    };
    const sink: EventSink = { emit: (_o, _t, reason, message) => events.push(`${reason}: ${message}`) };
    return { applied, events, client, sink };
  };

  it("creates a missing child and records an Event on the owner", async () => {
    const h = harness();
    expect(await applyChild(h.client, DEPLOYMENT, desired, undefined, owner, h.sink)).toBe("created");
    expect(h.applied).toHaveLength(1);
    expect(h.events).toEqual(["Created: created Deployment m"]);
  });

  it("does not write when the live object already matches", async () => {
    const h = harness();
    const live = { ...desired, metadata: { ...desired.metadata, uid: "x", resourceVersion: "3" } };
    expect(await applyChild(h.client, DEPLOYMENT, desired, live, owner, h.sink)).toBe("unchanged");
    expect(h.applied).toHaveLength(0);
    expect(h.events).toEqual([]);
  });
});

describe("ownerReference", () => {
  it("marks the controller owner so the API server blocks deletion until GC ran", () => {
    const ref = ownerReference(
      { apiVersion: "kiln.dev/v1alpha1", kind: "InferenceModel", metadata: { name: "m", uid: "u" } },
      true,
    );
    expect(ref).toEqual({
      apiVersion: "kiln.dev/v1alpha1",
      kind: "InferenceModel",
      name: "m",
      uid: "u",
      controller: true,
      blockOwnerDeletion: true,
    });
  });

  it("refuses an owner that has no uid yet", () => {
    expect(() => ownerReference({ apiVersion: "v1", kind: "X", metadata: { name: "m" } }, false)).toThrow(
      /X\/m/,
    );
  });
});
