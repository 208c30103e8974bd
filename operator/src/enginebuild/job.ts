import type { V1Job } from "@kubernetes/client-node";
import {
  BUILD_ENV,
  BUILD_EXIT,
  MODEL_CREDENTIALS_PREFIX,
  PERMANENT_FAILURE_REASON,
} from "../../../lib/manifest.js";
import type { GpuProductName } from "../api/gpu.js";
import { LABELS, MANAGED_BY } from "../api/labels.js";
import type { EngineBuild } from "../api/types.js";
import type { OperatorConfig } from "../config.js";
import { ownerReference } from "../controller/apply.js";
import { storeMounts } from "../store-volume.js";
import type { ClaimMounts } from "./claims.js";

/** `<build>-<attempt>`, kept a DNS label: Job names become a pod label value. */
export function jobName(build: string, attempt: number): string {
  const suffix = `-${attempt}`;
  return `${build.slice(0, 63 - suffix.length).replace(/-+$/, "")}${suffix}`;
}

export const TERMINATION_MESSAGE_PATH = "/dev/termination-log";
/** The build Job's one container: its exit, termination message and OOM kill are the build's. */
export const BUILDER_CONTAINER = "builder";

/**
 * The build Job of one attempt: runs the builder image on one node of the target product, with the
 * claims its pvc:// inputs name mounted (see claims.ts) and, for a file:// store, the store's
 * volume read-write: the builder publishes the engine there.
 */
export function desiredJob(
  build: EngineBuild,
  attempt: number,
  config: OperatorConfig,
  claims: ClaimMounts,
): V1Job {
  const product = build.spec.target.product as GpuProductName;
  const isGpu = product !== "cpu";
  const name = jobName(build.metadata.name ?? "", attempt);
  const labels = {
    [LABELS.engineBuild]: build.metadata.name ?? "",
    [LABELS.engineKey]: build.spec.key.slice(0, 10),
    [LABELS.managedBy]: MANAGED_BY,
    [LABELS.component]: "builder",
  };
  const modelSecret = build.spec.model.credentialsSecret;
  const storeSecret = config.objectStore.credentialsSecret;
  const envFrom = [
    ...(modelSecret ? [{ secretRef: { name: modelSecret }, prefix: MODEL_CREDENTIALS_PREFIX }] : []),
    ...(storeSecret ? [{ secretRef: { name: storeSecret } }] : []),
  ];
  const gpus = String(build.spec.engine.tensorParallel);
  // The configured requests and limits (the builder holds the weights in fp32 while it compiles, so
  // memory is what platform teams size), and the GPU limit last: it always wins.
  const { requests, limits } = config.defaults.builderResources;
  const gpuLimit = isGpu ? { [config.defaults.gpuResource]: gpus } : {};
  const resources = {
    ...(requests ? { requests: { ...requests } } : {}),
    ...(limits || isGpu ? { limits: { ...limits, ...gpuLimit } } : {}),
  };
  const store = storeMounts(config.objectStore, false);
  const volumes = [...claims.volumes, ...store.volumes];
  const volumeMounts = [...claims.volumeMounts, ...store.volumeMounts];
  return {
    apiVersion: "batch/v1",
    kind: "Job",
    metadata: {
      name,
      namespace: build.metadata.namespace,
      labels: { ...labels, [LABELS.buildAttempt]: String(attempt) },
      ownerReferences: [ownerReference(build, true)],
    },
    spec: {
      backoffLimit: config.limits.jobBackoffLimit,
      // The builder exits PERMANENT when no retry can help; fail the Job at once instead of
      // burning the backoff limit on the same bad checkpoint.
      podFailurePolicy: {
        rules: [
          {
            action: "FailJob",
            onExitCodes: { containerName: BUILDER_CONTAINER, operator: "In", values: [BUILD_EXIT.permanent] },
          },
          // A pod lost with its node (or evicted, preempted) says nothing about the build: the Job
          // replaces it without spending the backoff limit, instead of failing the whole attempt.
          { action: "Ignore", onPodConditions: [{ type: "DisruptionTarget", status: "True" }] },
        ],
      },
      activeDeadlineSeconds: config.limits.buildDeadlineSeconds,
      ttlSecondsAfterFinished: config.limits.jobTtlSeconds,
      template: {
        metadata: { labels },
        spec: {
          restartPolicy: "Never",
          nodeSelector: config.defaults.gpuNodeSelectors[product] ?? {},
          ...(isGpu
            ? {
                tolerations: [{ key: config.defaults.gpuResource, operator: "Exists", effect: "NoSchedule" }],
              }
            : {}),
          ...(volumes.length ? { volumes } : {}),
          containers: [
            {
              name: BUILDER_CONTAINER,
              image: build.spec.toolchain.builderImage,
              args: ["build"],
              env: [
                { name: BUILD_ENV.key, value: build.spec.key },
                { name: BUILD_ENV.spec, value: JSON.stringify(build.spec) },
                { name: BUILD_ENV.storeUri, value: config.objectStore.uri },
                ...(config.objectStore.endpoint
                  ? [{ name: BUILD_ENV.storeEndpoint, value: config.objectStore.endpoint }]
                  : []),
                { name: BUILD_ENV.storeRegion, value: config.objectStore.region },
              ],
              // Credentials by reference: the operator never reads the Secret's data.
              ...(envFrom.length ? { envFrom } : {}),
              resources,
              ...(volumeMounts.length ? { volumeMounts } : {}),
              terminationMessagePath: TERMINATION_MESSAGE_PATH,
              terminationMessagePolicy: "FallbackToLogsOnError",
            },
          ],
        },
      },
    },
  };
}

/** The attempt a build Job runs, from its label; 0 for a Job that is not one of ours. */
export function attemptOf(job: V1Job | undefined): number {
  const n = Number(job?.metadata?.labels?.[LABELS.buildAttempt]);
  return Number.isInteger(n) && n > 0 ? n : 0;
}

/** The build's Job of the highest attempt among `jobs`, if any. */
export function latestJobOf(build: EngineBuild, jobs: readonly V1Job[]): V1Job | undefined {
  return jobs
    .filter((j) => (j.metadata?.ownerReferences ?? []).some((r) => r.uid === build.metadata.uid))
    .reduce<V1Job | undefined>((best, j) => (attemptOf(j) > attemptOf(best) ? j : best), undefined);
}

export type JobOutcome =
  | { state: "running" }
  | { state: "complete" }
  | { state: "failed"; reason: string; message: string; permanent: boolean };

export function jobOutcome(job: V1Job): JobOutcome {
  const conditions = job.status?.conditions ?? [];
  const done = (type: string) => conditions.find((c) => c.type === type && c.status === "True");
  if (done("Complete")) return { state: "complete" };
  const failed = done("Failed");
  if (failed)
    return {
      state: "failed",
      reason: failed.reason ?? "JobFailed",
      message: failed.message ?? "the build Job failed",
      permanent: failed.reason === PERMANENT_FAILURE_REASON,
    };
  return { state: "running" };
}
