import type { V1Deployment, V1Service, V1Toleration } from "@kubernetes/client-node";
import { RUNTIME_ENV } from "../../../lib/manifest.js";
import type { GpuProductName } from "../api/gpu.js";
import { inferenceModelSpecSchema } from "../api/inferencemodel.js";
import { ANNOTATIONS, LABELS, MANAGED_BY } from "../api/labels.js";
import { applyDefaults } from "../api/schema.js";
import type { InferenceModel } from "../api/types.js";
import type { OperatorConfig } from "../config.js";
import { ownerReference } from "../controller/apply.js";
import { storeMounts } from "../store-volume.js";

/** The engine a Deployment runs: what the pod template pins. */
export interface RunningEngine {
  key: string;
  uri: string;
  sha256: string;
  toolchain: string;
  build: string;
}

/** Deployment name per GPU product: one Deployment per engine, all behind the model's Service. */
export function deploymentName(model: string, product: GpuProductName): string {
  const suffix = product.toLowerCase().replace(/[^a-z0-9]+/g, "-");
  return `${model.slice(0, 63 - suffix.length - 1).replace(/-+$/, "")}-${suffix}`;
}

export const selectorLabels = (model: string, product: GpuProductName) => ({
  [LABELS.model]: model,
  [LABELS.product]: product.toLowerCase(),
});

/** Engine pinned by a live Deployment's pod template, if it is one of ours. */
export function runningEngineOf(deployment: V1Deployment | undefined): RunningEngine | undefined {
  const a = deployment?.spec?.template?.metadata?.annotations;
  const key = a?.[ANNOTATIONS.engineKey];
  if (!a || !key) return undefined;
  return {
    key,
    uri: a[ANNOTATIONS.engineUri] ?? "",
    sha256: a[ANNOTATIONS.engineSha256] ?? "",
    toolchain: a[ANNOTATIONS.toolchain] ?? "",
    build: deployment?.metadata?.labels?.[LABELS.engineBuild] ?? "",
  };
}

export function desiredDeployment(
  model: InferenceModel,
  product: GpuProductName,
  engine: RunningEngine,
  config: OperatorConfig,
): V1Deployment {
  const name = model.metadata.name ?? "";
  const spec = applyDefaults(inferenceModelSpecSchema, model.spec);
  const runtime = spec.runtime ?? {};
  const port = runtime.port ?? 8000;
  const gpus = spec.gpu.count ?? 1;
  const isGpu = product !== "cpu";
  const kvDtype = spec.engine?.kvCache?.dtype ?? "auto";
  const labels = {
    ...selectorLabels(name, product),
    [LABELS.managedBy]: MANAGED_BY,
    [LABELS.component]: "runtime",
  };
  const limits: Record<string, string> = { ...stringValues(runtime.resources?.limits) };
  if (isGpu) limits[config.defaults.gpuResource] = String(gpus);
  const tolerations: V1Toleration[] = [
    ...(isGpu ? [{ key: config.defaults.gpuResource, operator: "Exists", effect: "NoSchedule" }] : []),
    ...((runtime.tolerations ?? []) as V1Toleration[]),
  ];
  const env = [
    { name: RUNTIME_ENV.engineUri, value: engine.uri },
    { name: RUNTIME_ENV.engineSha256, value: engine.sha256 },
    { name: RUNTIME_ENV.engineKey, value: engine.key },
    { name: RUNTIME_ENV.modelName, value: name },
    { name: RUNTIME_ENV.port, value: String(port) },
    { name: RUNTIME_ENV.kvMemoryFraction, value: String(spec.engine?.kvCache?.memoryFraction ?? 0.9) },
    // auto leaves the variable unset so the runtime takes its backend's default cache type.
    ...(kvDtype !== "auto" ? [{ name: RUNTIME_ENV.kvCacheDtype, value: kvDtype }] : []),
    ...(config.objectStore.endpoint
      ? [{ name: RUNTIME_ENV.storeEndpoint, value: config.objectStore.endpoint }]
      : []),
    { name: RUNTIME_ENV.storeRegion, value: config.objectStore.region },
  ];
  // A file:// store's volume, read-only: the runtime only downloads the engine from it.
  const store = storeMounts(config.objectStore, true);
  return {
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata: {
      name: deploymentName(name, product),
      namespace: model.metadata.namespace,
      labels: { ...labels, [LABELS.engineBuild]: engine.build },
      ownerReferences: [ownerReference(model, true)],
    },
    spec: {
      replicas: runtime.replicas ?? 1,
      selector: { matchLabels: selectorLabels(name, product) },
      strategy: {
        type: "RollingUpdate",
        rollingUpdate: {
          maxSurge: runtime.rollout?.maxSurge ?? 1,
          maxUnavailable: runtime.rollout?.maxUnavailable ?? 0,
        },
      },
      template: {
        metadata: {
          labels,
          // A new engine changes the template, which is what makes the Deployment roll.
          annotations: {
            [ANNOTATIONS.engineKey]: engine.key,
            [ANNOTATIONS.engineUri]: engine.uri,
            [ANNOTATIONS.engineSha256]: engine.sha256,
            [ANNOTATIONS.toolchain]: engine.toolchain,
          },
        },
        spec: {
          nodeSelector: {
            ...(config.defaults.gpuNodeSelectors[product] ?? {}),
            ...(runtime.nodeSelector ?? {}),
          },
          ...(tolerations.length ? { tolerations } : {}),
          // Long enough for in-flight generations to finish after SIGTERM.
          terminationGracePeriodSeconds: 60,
          ...(store.volumes.length ? { volumes: store.volumes } : {}),
          containers: [
            {
              name: "runtime",
              image: config.toolchain.runtimeImage,
              ports: [{ name: "http", containerPort: port, protocol: "TCP" }],
              env,
              ...(config.objectStore.credentialsSecret
                ? { envFrom: [{ secretRef: { name: config.objectStore.credentialsSecret } }] }
                : {}),
              resources: {
                ...(runtime.resources?.requests
                  ? { requests: stringValues(runtime.resources.requests) }
                  : {}),
                ...(Object.keys(limits).length ? { limits } : {}),
              },
              ...(store.volumeMounts.length ? { volumeMounts: store.volumeMounts } : {}),
              readinessProbe: {
                httpGet: { path: "/readyz", port: "http" },
                periodSeconds: 5,
                failureThreshold: 3,
              },
              livenessProbe: {
                httpGet: { path: "/healthz", port: "http" },
                periodSeconds: 10,
                failureThreshold: 6,
              },
              // Loading a large engine takes a while; liveness must not kill a pod that is still loading.
              startupProbe: {
                httpGet: { path: "/healthz", port: "http" },
                periodSeconds: 5,
                failureThreshold: 120,
              },
            },
          ],
        },
      },
    },
  };
}

export function desiredService(model: InferenceModel): V1Service {
  const name = model.metadata.name ?? "";
  const port = applyDefaults(inferenceModelSpecSchema, model.spec).runtime?.port ?? 8000;
  return {
    apiVersion: "v1",
    kind: "Service",
    metadata: {
      name,
      namespace: model.metadata.namespace,
      labels: { [LABELS.model]: name, [LABELS.managedBy]: MANAGED_BY },
      ownerReferences: [ownerReference(model, true)],
    },
    spec: {
      // Every product's Deployment serves the same model, so one Service fronts them all.
      selector: { [LABELS.model]: name },
      ports: [{ name: "http", port, targetPort: "http", protocol: "TCP" }],
    },
  };
}

export const endpointOf = (model: InferenceModel) =>
  `http://${model.metadata.name}.${model.metadata.namespace}.svc:${applyDefaults(inferenceModelSpecSchema, model.spec).runtime?.port ?? 8000}`;

// Quantities are spelled as strings so the live object compares equal to what we asked for.
function stringValues(values: Record<string, string | number> | undefined): Record<string, string> {
  return Object.fromEntries(Object.entries(values ?? {}).map(([k, v]) => [k, String(v)]));
}
