import type { V1Deployment, V1Service } from "@kubernetes/client-node";
import type { Logger } from "pino";
import { API_VERSION } from "../api/common.js";
import { ENGINE_BUILD } from "../api/enginebuild.js";
import type { GpuProductName } from "../api/gpu.js";
import {
  INFERENCE_MODEL,
  type InferenceModelStatus,
  inferenceModelSpecSchema,
} from "../api/inferencemodel.js";
import { LABELS, MANAGED_BY } from "../api/labels.js";
import { applyDefaults } from "../api/schema.js";
import type { EngineBuild, InferenceModel } from "../api/types.js";
import type { OperatorConfig } from "../config.js";
import { applyChild, isSubset, ownerReference } from "../controller/apply.js";
import type { Clock } from "../controller/clock.js";
import type { EventSink, EventType } from "../controller/events.js";
import type { Informer } from "../controller/informer.js";
import { isAlreadyExists, type KubeClient, type ResourceType } from "../controller/kube.js";
import type { ReconcileResult } from "../controller/workqueue.js";
import { buildSpecFor, engineBuildName, shortKey } from "./engine-key.js";
import { preflight } from "./preflight.js";
import { pinnedRevision, type RevisionResolver } from "./revision.js";
import { computeStatus, conditionTransitions, rolledOut, type TargetView } from "./status.js";
import {
  deploymentName,
  desiredDeployment,
  desiredService,
  endpointOf,
  type RunningEngine,
  runningEngineOf,
} from "./workload.js";

export const IM_RESOURCE: ResourceType = {
  apiVersion: API_VERSION,
  kind: INFERENCE_MODEL.kind,
  plural: INFERENCE_MODEL.plural,
  namespaced: true,
};
export const EB_RESOURCE: ResourceType = {
  apiVersion: API_VERSION,
  kind: ENGINE_BUILD.kind,
  plural: ENGINE_BUILD.plural,
  namespaced: true,
};
export const DEPLOYMENT: ResourceType = {
  apiVersion: "apps/v1",
  kind: "Deployment",
  plural: "deployments",
  namespaced: true,
};
export const SERVICE: ResourceType = {
  apiVersion: "v1",
  kind: "Service",
  plural: "services",
  namespaced: true,
};

/** Everything the plan looks at, already read from caches (and the revision resolver). */
export interface ModelObservation {
  model: InferenceModel;
  revision: string | undefined;
  revisionError?: string;
  /** EngineBuilds of the model's namespace, by engine key. */
  buildsByKey: ReadonlyMap<string, EngineBuild>;
  /** EngineBuilds carrying an owner reference to this model. */
  ownedBuilds: readonly EngineBuild[];
  /** Deployments controlled by this model. */
  deployments: readonly V1Deployment[];
  service: V1Service | undefined;
  gpusPerNode?: Partial<Record<GpuProductName, number>>;
  config: OperatorConfig;
  now: Date;
}

export interface PlannedEvent {
  type: EventType;
  reason: string;
  message: string;
}

/** What the act step will do, as plain data. */
export interface ModelPlan {
  createBuilds: EngineBuild[];
  /** Existing shared builds, with this model's owner reference added. */
  adoptBuilds: EngineBuild[];
  /** Builds this model no longer needs, with its owner reference removed (still used by others). */
  releaseBuilds: EngineBuild[];
  /** Builds only this model used and no longer needs. */
  deleteBuilds: string[];
  applyDeployments: V1Deployment[];
  deleteDeployments: string[];
  service: V1Service | undefined;
  status: InferenceModelStatus;
  events: PlannedEvent[];
}

const WARNING_REASONS = new Set([
  "BuildFailed",
  "PreflightFailed",
  "ProgressDeadlineExceeded",
  "NoReadyReplicas",
  "NoMatchingNodes",
]);

/**
 * Whether any node offers `product`. The CPU backend runs anywhere; with no node inventory at hand
 * (`gpusPerNode` undefined) every product counts as present.
 */
export const productPresent = (
  product: GpuProductName,
  gpusPerNode: Partial<Record<GpuProductName, number>> | undefined,
) => product === "cpu" || !gpusPerNode || gpusPerNode[product] !== undefined;

const ownedBy = (obj: { metadata?: { ownerReferences?: { uid: string }[] } }, uid: string | undefined) =>
  (obj.metadata?.ownerReferences ?? []).some((r) => r.uid === uid);

/**
 * The InferenceModel reconcile, as a pure function. Steps, in order:
 * 1. pre-flight (spec rules CEL cannot check, GPU memory fit) and the pinned revision;
 * 2. desired engine key per GPU product, and the EngineBuild for it (shared by key);
 * 3. per product a Deployment running the desired engine once built, else the one already running
 *    (a model never drops its serving engine while a new one builds or fails);
 * 4. the Service;
 * 5. release builds and Deployments no longer wanted;
 * 6. status and an Event per condition transition.
 */
export function planModel(o: ModelObservation): ModelPlan {
  const { model, config } = o;
  const uid = model.metadata.uid;
  const spec = applyDefaults(inferenceModelSpecSchema, model.spec);
  const problems = preflight(model.spec, o.gpusPerNode);
  const blocked = problems.length > 0 || !o.revision;
  const plan: ModelPlan = {
    createBuilds: [],
    adoptBuilds: [],
    releaseBuilds: [],
    deleteBuilds: [],
    applyDeployments: [],
    deleteDeployments: [],
    service: undefined,
    status: {},
    events: [],
  };

  const targets: TargetView[] = [];
  const absent: GpuProductName[] = [];
  if (!blocked && o.revision) {
    for (const product of spec.gpu.products) {
      const name = deploymentName(model.metadata.name ?? "", product);
      const live = o.deployments.find((d) => d.metadata?.name === name);
      // No node of this product: building would claim a GPU that is not there. A Deployment that
      // already exists stays (nodes come and go; its pods wait for them), so only new work waits.
      if (!live && !productPresent(product, o.gpusPerNode)) {
        absent.push(product);
        continue;
      }
      const desired = buildSpecFor(model.spec, product, o.revision, config.toolchain);
      const existing = o.buildsByKey.get(desired.key);
      const buildName = existing?.metadata.name ?? engineBuildName(desired.model.source, desired.key);
      if (!existing) {
        plan.createBuilds.push({
          apiVersion: API_VERSION,
          kind: ENGINE_BUILD.kind,
          metadata: {
            name: buildName,
            namespace: model.metadata.namespace,
            labels: { [LABELS.engineKey]: shortKey(desired.key), [LABELS.managedBy]: MANAGED_BY },
            // Not a controller reference: every model with this key owns the build equally, and the
            // garbage collector removes it when the last of them is deleted.
            ownerReferences: [ownerReference(model, false)],
          },
          spec: desired,
        });
      } else if (!ownedBy(existing, uid)) {
        plan.adoptBuilds.push({
          ...existing,
          metadata: {
            ...existing.metadata,
            ownerReferences: [...(existing.metadata.ownerReferences ?? []), ownerReference(model, false)],
          },
        });
      }

      const running = runningEngineOf(live);
      const artifact = existing?.status?.phase === "Succeeded" ? existing.status.artifact : undefined;
      const toRun: RunningEngine | undefined = artifact
        ? {
            key: desired.key,
            uri: artifact.uri,
            sha256: artifact.sha256,
            toolchain: desired.toolchain.version,
            build: buildName,
          }
        : running;
      if (toRun) plan.applyDeployments.push(desiredDeployment(model, product, toRun, config));
      targets.push({
        product,
        desired,
        buildName,
        build: existing,
        deployment: live,
        deploymentName: name,
        serving: live && rolledOut(live) ? running : undefined,
        desiredReplicas: spec.runtime?.replicas ?? 1,
      });
    }

    const wantedDeployments = new Set(targets.map((t) => t.deploymentName));
    for (const d of o.deployments) {
      const name = d.metadata?.name ?? "";
      if (!wantedDeployments.has(name)) plan.deleteDeployments.push(name);
    }

    // Keep builds that are desired or still running somewhere; let go of the rest.
    const keep = new Set(targets.map((t) => t.desired.key));
    for (const t of targets) {
      const running = runningEngineOf(t.deployment);
      if (running) keep.add(running.key);
    }
    for (const b of o.ownedBuilds) {
      if (keep.has(b.spec.key)) continue;
      const others = (b.metadata.ownerReferences ?? []).filter((r) => r.uid !== uid);
      if (others.length)
        plan.releaseBuilds.push({ ...b, metadata: { ...b.metadata, ownerReferences: others } });
      else plan.deleteBuilds.push(b.metadata.name ?? "");
    }
  }

  if (plan.applyDeployments.length || o.service) plan.service = desiredService(model);
  plan.status = computeStatus({
    model,
    revision: o.revision,
    revisionError: o.revisionError,
    problems,
    targets,
    absent,
    endpoint: plan.service ? endpointOf(model) : undefined,
    now: o.now,
  });
  plan.events = conditionTransitions(model.status?.conditions, plan.status.conditions).map((c) => ({
    type: c.status === "False" && WARNING_REASONS.has(c.reason) ? "Warning" : "Normal",
    reason: c.reason,
    message: `${c.type}=${c.status}${c.message ? `: ${c.message}` : ""}`,
  }));
  return plan;
}

export interface ModelContext {
  client: KubeClient;
  models: Informer<InferenceModel>;
  builds: Informer<EngineBuild>;
  deployments: Informer<V1Deployment>;
  services: Informer<V1Service>;
  resolveRevision: RevisionResolver;
  gpusPerNode: () => Partial<Record<GpuProductName, number>>;
  events: EventSink;
  config: OperatorConfig;
  clock: Clock;
  log: Logger;
}

/** Index names the reconcilers rely on. */
export const INDEX = { key: "engineKey", owner: "ownerUid" } as const;

/** Read, plan, act, write status. Never waits on a Job or rollout: watches bring it back. */
export async function reconcileModel(ctx: ModelContext, key: string): Promise<ReconcileResult | undefined> {
  const model = ctx.models.get(key);
  // Deleted or being deleted: no finalizer, by decision. Everything a model owns is a Kubernetes
  // object with an owner reference (Deployments, Service; EngineBuilds shared by key, whose Jobs
  // they own), so the garbage collector removes it, and keeps a shared EngineBuild while another
  // model still references it. The engines in object storage are content-addressed and shared by
  // every namespace with the same key: they are a cache kept on purpose, not the model's to delete.
  // A finalizer would only add a way for deletion to hang while the operator is down.
  if (!model || model.metadata.deletionTimestamp) return undefined;
  const log = ctx.log.child({ inferenceModel: key });
  const namespace = model.metadata.namespace ?? "";

  let revision = pinnedRevision(model);
  let revisionError: string | undefined;
  if (!revision) {
    try {
      revision = await ctx.resolveRevision(model.spec.model.source);
    } catch (err) {
      revisionError = `InferenceModel ${key}: spec.model.source: cannot resolve a revision: ${(err as Error).message}`;
    }
  }

  const uid = model.metadata.uid ?? "";
  const buildsByKey = new Map(
    ctx.builds
      .list()
      .filter((b) => b.metadata.namespace === namespace)
      .map((b) => [b.spec.key, b] as const),
  );
  const plan = planModel({
    model,
    revision,
    revisionError,
    buildsByKey,
    ownedBuilds: ctx.builds.byIndex(INDEX.owner, uid),
    deployments: ctx.deployments.byIndex(INDEX.owner, uid),
    service: ctx.services.get(`${namespace}/${model.metadata.name}`),
    gpusPerNode: ctx.gpusPerNode(),
    config: ctx.config,
    now: new Date(ctx.clock.now()),
  });

  for (const build of plan.createBuilds) {
    try {
      await ctx.client.create(EB_RESOURCE, build);
      ctx.events.emit(
        model,
        "Normal",
        "EngineBuildCreated",
        `created EngineBuild ${build.metadata.name} for key ${shortKey(build.spec.key)}`,
      );
    } catch (err) {
      // Another model with the same key created it first: the next reconcile adopts it.
      if (!isAlreadyExists(err)) throw err;
      return { requeueAfterMs: 1000 };
    }
  }
  for (const build of plan.adoptBuilds) {
    await ctx.client.replace(EB_RESOURCE, build);
    ctx.events.emit(
      model,
      "Normal",
      "EngineBuildShared",
      `using EngineBuild ${build.metadata.name} shared by key`,
    );
  }
  for (const build of plan.releaseBuilds) await ctx.client.replace(EB_RESOURCE, build);
  for (const name of plan.deleteBuilds) {
    await ctx.client.delete(EB_RESOURCE, namespace, name);
    ctx.events.emit(model, "Normal", "EngineBuildDeleted", `deleted EngineBuild ${name}: no longer needed`);
  }
  for (const d of plan.applyDeployments) {
    await applyChild(
      ctx.client,
      DEPLOYMENT,
      d,
      ctx.deployments.get(`${namespace}/${d.metadata?.name}`),
      model,
      ctx.events,
    );
  }
  for (const name of plan.deleteDeployments) {
    await ctx.client.delete(DEPLOYMENT, namespace, name);
    ctx.events.emit(
      model,
      "Normal",
      "Deleted",
      `deleted Deployment ${name}: its GPU product is no longer listed`,
    );
  }
  if (plan.service)
    await applyChild(
      ctx.client,
      SERVICE,
      plan.service,
      ctx.services.get(`${namespace}/${model.metadata.name}`),
      model,
      ctx.events,
    );

  if (!isSubset(plan.status, model.status ?? {}) || !isSubset(model.status ?? {}, plan.status)) {
    await ctx.client.replaceStatus(IM_RESOURCE, { ...model, status: plan.status });
  }
  for (const e of plan.events) ctx.events.emit(model, e.type, e.reason, e.message);
  log.debug({ phase: plan.status.phase }, "reconciled");
  // An unresolvable revision is not watched for: retry it on a timer (the queue's backoff would
  // also do, but this is an expected state, not an error).
  return revisionError ? { requeueAfterMs: 30_000 } : undefined;
}
