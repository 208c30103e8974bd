import {
  type ApiException,
  ApiextensionsV1Api,
  CustomObjectsApi,
  type V1CustomResourceDefinition,
} from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testKubeConfig } from "./env.js";
import { watchUntil } from "./support/watch.js";

const group = "smoke.kiln.dev";
const plural = "widgets";
const crdName = `${plural}.${group}`;

const crd: V1CustomResourceDefinition = {
  apiVersion: "apiextensions.k8s.io/v1",
  kind: "CustomResourceDefinition",
  metadata: { name: crdName },
  spec: {
    group,
    scope: "Namespaced",
    names: { plural, singular: "widget", kind: "Widget" },
    versions: [
      {
        name: "v1",
        served: true,
        storage: true,
        subresources: { status: {} },
        schema: {
          openAPIV3Schema: {
            type: "object",
            properties: {
              spec: {
                type: "object",
                required: ["size"],
                properties: { size: { type: "integer", minimum: 1 }, color: { type: "string" } },
              },
              status: { type: "object", properties: { phase: { type: "string" } } },
            },
          },
        },
      },
    ],
  },
};

describe("custom resources on the test control plane", () => {
  const kc = testKubeConfig();
  const extensions = kc.makeApiClient(ApiextensionsV1Api);
  const objects = kc.makeApiClient(CustomObjectsApi);
  const widget = (name: string, spec: Record<string, unknown>) => ({
    apiVersion: `${group}/v1`,
    kind: "Widget",
    metadata: { name },
    spec,
  });

  beforeAll(async () => {
    await extensions.createCustomResourceDefinition({ body: crd });
    await watchUntil<V1CustomResourceDefinition>(
      kc,
      "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
      { name: crdName },
      (obj) => obj.status?.conditions?.some((c) => c.type === "Established" && c.status === "True") ?? false,
      { timeoutMs: 30_000, describe: `CRD ${crdName} Established` },
    );
  });

  afterAll(async () => {
    await extensions.deleteCustomResourceDefinition({ name: crdName });
  });

  it("creates a custom object and reads back the same spec", async () => {
    const target = { group, version: "v1", namespace: "default", plural };
    await objects.createNamespacedCustomObject({
      ...target,
      body: widget("blue-one", { size: 3, color: "blue" }),
    });

    const read = (await objects.getNamespacedCustomObject({ ...target, name: "blue-one" })) as {
      spec: unknown;
      metadata: { uid?: string };
    };
    expect(read.spec).toEqual({ size: 3, color: "blue" });
    expect(read.metadata.uid).toMatch(/^[0-9a-f-]{36}$/);
  });

  it("rejects an object that violates the CRD schema", async () => {
    const target = { group, version: "v1", namespace: "default", plural };
    const error = await objects
      .createNamespacedCustomObject({ ...target, body: widget("too-small", { size: 0 }) })
      .then(
        () => undefined,
        (err: ApiException<string>) => err,
      );
    expect(error?.code).toBe(422);
    expect(String(error?.body)).toContain("spec.size");
  });
});
