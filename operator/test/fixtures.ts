import type { V1Deployment } from "@kubernetes/client-node";
import type { InferenceModelSpec } from "../src/api/inferencemodel.js";
import type { EngineBuild, InferenceModel } from "../src/api/types.js";
import { loadConfig, type OperatorConfig } from "../src/config.js";
import { planModel } from "../src/inferencemodel/reconcile.js";

export const config: OperatorConfig = loadConfig(
  {
    KILN_TOOLCHAIN_VERSION: "0.1.0",
    KILN_BUILDER_IMAGE: "kiln/builder:0.1.0",
    KILN_RUNTIME_IMAGE: "kiln/runtime:0.1.0",
    KILN_STORE_URI: "s3://engines/kiln",
    KILN_STORE_ENDPOINT: "http://127.0.0.1:9000",
    KILN_MAX_CONCURRENT_BUILDS: "2",
  },
  () => "",
);

export const NOW = new Date("2025-01-01T00:00:00Z");

export function model(
  name: string,
  spec: Partial<InferenceModelSpec> = {},
  uid = `uid-${name}`,
): InferenceModel {
  return {
    apiVersion: "kiln.dev/v1alpha1",
    kind: "InferenceModel",
    metadata: { name, namespace: "ml", uid, generation: 1 },
    spec: {
      model: { source: "hf://TinyLlama/TinyLlama-1.1B-Chat-v1.0" },
      gpu: { products: ["H100"] },
      ...spec,
    },
  };
}

/** The EngineBuild the model plan creates for `model(name, spec)`, as the API server holds it. */
/** The first plan of a model the cluster has nothing for yet: no builds, no workload. */
export function firstPlanOf(m: InferenceModel, c: OperatorConfig = config) {
  return planModel({
    model: m,
    revision: "rev1",
    buildsByKey: new Map(),
    ownedBuilds: [],
    deployments: [],
    service: undefined,
    config: c,
    now: NOW,
  });
}

export function engineBuildFor(name = "m", spec: Partial<InferenceModelSpec> = {}): EngineBuild {
  const b = firstPlanOf(model(name, spec)).createBuilds[0] as EngineBuild;
  return { ...b, metadata: { ...b.metadata, uid: `uid-eb-${name}`, generation: 1 } };
}

/** A build the API server has, with the status a finished build would have. */
export function succeeded(build: EngineBuild): EngineBuild {
  return {
    ...build,
    metadata: { ...build.metadata, uid: `uid-${build.metadata.name}`, generation: 1 },
    status: {
      phase: "Succeeded",
      attempts: 1,
      completedAt: NOW.toISOString(),
      artifact: {
        uri: `s3://engines/kiln/engines/${build.spec.key}/engine.kiln`,
        sha256: "a".repeat(64),
        sizeBytes: 1234,
      },
    },
  };
}

/** What the API server would hold after applying `d`, rolled out with `ready` ready pods. */
export function live(d: V1Deployment, ready: number, rolled = true): V1Deployment {
  const replicas = d.spec?.replicas ?? 1;
  return {
    ...d,
    metadata: { ...d.metadata, generation: 1 },
    status: {
      observedGeneration: 1,
      replicas,
      updatedReplicas: rolled ? replicas : 0,
      readyReplicas: ready,
      availableReplicas: ready,
    },
  };
}
