import type { V1Deployment } from "@kubernetes/client-node";
import { type Condition, type ConditionInput, setCondition } from "../api/conditions.js";
import type { EngineBuildSpec } from "../api/enginebuild.js";
import type { GpuProductName } from "../api/gpu.js";
import type {
  EngineRef,
  InferenceModelPhase,
  InferenceModelStatus,
  TargetStatus,
} from "../api/inferencemodel.js";
import type { EngineBuild, InferenceModel } from "../api/types.js";
import { shortKey } from "./engine-key.js";
import type { PreflightProblem } from "./preflight.js";
import type { RunningEngine } from "./workload.js";

export const CONDITIONS = {
  engineReady: "EngineReady",
  available: "Available",
  progressing: "Progressing",
  ready: "Ready",
} as const;

/** What the plan found out about one GPU product of a model. */
export interface TargetView {
  product: GpuProductName;
  desired: EngineBuildSpec;
  buildName: string;
  build: EngineBuild | undefined;
  /** The Deployment as observed (before this reconcile's writes). */
  deployment: V1Deployment | undefined;
  deploymentName: string;
  /** Engine now fully rolled out on the Deployment, if any. */
  serving: RunningEngine | undefined;
  desiredReplicas: number;
}

export interface StatusInput {
  model: InferenceModel;
  /** The pinned revision of spec.model.source; undefined while it cannot be resolved. */
  revision: string | undefined;
  revisionError: string | undefined;
  problems: PreflightProblem[];
  targets: TargetView[];
  /** Listed GPU products no node offers: not built until one joins. */
  absent?: GpuProductName[];
  endpoint: string | undefined;
  now: Date;
}

const refOf = (engine: RunningEngine): EngineRef => ({
  key: engine.key,
  ...(engine.build ? { build: engine.build } : {}),
  ...(engine.uri ? { uri: engine.uri } : {}),
  ...(engine.sha256 ? { sha256: engine.sha256 } : {}),
  ...(engine.toolchain ? { toolchain: engine.toolchain } : {}),
});

const buildPhase = (t: TargetView) => t.build?.status?.phase ?? "Pending";

/** A Deployment whose every pod runs the current template and that is not stuck. */
export function rolledOut(d: V1Deployment | undefined): boolean {
  if (!d?.status || !d.spec) return false;
  const s = d.status;
  return (
    (s.observedGeneration ?? 0) >= (d.metadata?.generation ?? 0) &&
    (s.updatedReplicas ?? 0) === (d.spec.replicas ?? 1) &&
    (s.replicas ?? 0) === (s.updatedReplicas ?? 0)
  );
}

const progressDeadlineExceeded = (d: V1Deployment | undefined) =>
  d?.status?.conditions?.some((c) => c.type === "Progressing" && c.reason === "ProgressDeadlineExceeded") ??
  false;

/**
 * Status is derived in one place from what was observed: phase, per-target engines, counts and the
 * EngineReady / Available / Progressing conditions, with Ready derived from those three.
 */
export function computeStatus(input: StatusInput): InferenceModelStatus {
  const { model, targets, now } = input;
  const previous = model.status ?? {};
  const generation = model.metadata.generation;

  // Blocked (pre-flight failed, revision unknown): nothing new was planned, so what was last
  // observed about each target still stands.
  const blocked = input.problems.length > 0 || !input.revision;
  const absent = input.absent ?? [];
  const targetStatus: TargetStatus[] = blocked
    ? (previous.targets ?? [])
    : targets
        .map((t): TargetStatus => {
          const artifact = t.build?.status?.artifact;
          const previousTarget = previous.targets?.find((p) => p.product === t.product);
          const desiredEngine: EngineRef = {
            key: t.desired.key,
            build: t.buildName,
            toolchain: t.desired.toolchain.version,
            ...(artifact ? { uri: artifact.uri, sha256: artifact.sha256 } : {}),
            ...(t.build?.status?.completedAt ? { builtAt: t.build.status.completedAt } : {}),
          };
          // While a new engine rolls out, the old one is still what answers requests.
          const servingEngine = t.serving
            ? { ...refOf(t.serving), ...(t.serving.key === desiredEngine.key ? pick(desiredEngine) : {}) }
            : previousTarget?.servingEngine;
          return {
            product: t.product,
            desiredEngine,
            ...(servingEngine ? { servingEngine } : {}),
            ...(t.deployment ? { deployment: t.deploymentName } : {}),
            replicas: t.deployment?.status?.replicas ?? 0,
            readyReplicas: t.deployment?.status?.readyReplicas ?? 0,
          };
        })
        .concat(
          absent.map(
            (product): TargetStatus => ({
              product,
              message: `no node offers ${product}; its engine is built once one joins`,
            }),
          ),
        );

  const desiredReplicas = blocked
    ? (previous.replicas ?? 0)
    : targets.reduce((n, t) => n + t.desiredReplicas, 0);
  const readyReplicas = targetStatus.reduce((n, t) => n + (t.readyReplicas ?? 0), 0);
  const anyServing = targetStatus.some((t) => t.servingEngine && (t.readyReplicas ?? 0) > 0);

  const engine = ((): ConditionInput => {
    if (input.problems.length) {
      return {
        type: CONDITIONS.engineReady,
        status: "False",
        reason: "PreflightFailed",
        message: input.problems.map((p) => p.message).join("; "),
      };
    }
    if (!input.revision) {
      return {
        type: CONDITIONS.engineReady,
        status: "Unknown",
        reason: "ResolvingRevision",
        message: input.revisionError ?? "resolving the model revision",
      };
    }
    if (targets.length === 0) {
      return {
        type: CONDITIONS.engineReady,
        status: "False",
        reason: "NoMatchingNodes",
        message: `no node offers any of ${absent.join(", ")}; nothing is built until one joins`,
      };
    }
    const failed = targets.filter((t) => buildPhase(t) === "Failed");
    if (failed.length) {
      return {
        type: CONDITIONS.engineReady,
        status: "False",
        reason: "BuildFailed",
        message: failed.map((t) => `${t.buildName}: ${t.build?.status?.message ?? "failed"}`).join("; "),
      };
    }
    const waiting = targets.filter((t) => buildPhase(t) !== "Succeeded");
    if (waiting.length) {
      const queued = waiting.find((t) => buildPhase(t) === "Queued");
      const running = waiting.some((t) => buildPhase(t) === "Running");
      return {
        type: CONDITIONS.engineReady,
        status: "False",
        reason: running ? "Building" : queued ? "Queued" : "BuildPending",
        message: waiting
          .map((t) => {
            const s = t.build?.status;
            const where = s?.queuePosition ? ` (position ${s.queuePosition})` : "";
            return `${t.buildName}: ${s?.phase ?? "Pending"}${where}`;
          })
          .join("; "),
      };
    }
    return {
      type: CONDITIONS.engineReady,
      status: "True",
      reason: "EngineBuilt",
      message: "every target engine is built",
    };
  })();

  const allDesiredServing = targets.length > 0 && targets.every((t) => t.serving?.key === t.desired.key);
  const stuck = targets.some((t) => progressDeadlineExceeded(t.deployment));
  const available: ConditionInput =
    desiredReplicas === 0 && allDesiredServing
      ? {
          type: CONDITIONS.available,
          status: "True",
          reason: "ScaledToZero",
          message: "runtime.replicas is 0",
        }
      : targets.length > 0 && targets.every((t) => (t.deployment?.status?.readyReplicas ?? 0) > 0)
        ? {
            type: CONDITIONS.available,
            status: "True",
            reason: "MinimumReplicasReady",
            message: `${readyReplicas}/${desiredReplicas} replicas ready`,
          }
        : {
            type: CONDITIONS.available,
            status: "False",
            reason: targets.some((t) => t.deployment) ? "NoReadyReplicas" : "NotDeployed",
            message: `${readyReplicas}/${desiredReplicas} replicas ready`,
          };

  const progressing: ConditionInput = (() => {
    if (
      engine.status === "False" &&
      engine.reason !== "Building" &&
      engine.reason !== "Queued" &&
      engine.reason !== "BuildPending"
    ) {
      return {
        type: CONDITIONS.progressing,
        status: "False",
        reason: engine.reason,
        message: engine.message ?? "",
      };
    }
    if (engine.status !== "True") {
      return {
        type: CONDITIONS.progressing,
        status: "True",
        reason: engine.reason,
        message: engine.message ?? "",
      };
    }
    if (stuck) {
      return {
        type: CONDITIONS.progressing,
        status: "False",
        reason: "ProgressDeadlineExceeded",
        message: "a runtime Deployment stopped making progress",
      };
    }
    if (!allDesiredServing || readyReplicas < desiredReplicas) {
      return {
        type: CONDITIONS.progressing,
        status: "True",
        reason: "RollingOut",
        message: `${readyReplicas}/${desiredReplicas} replicas ready on the desired engine`,
      };
    }
    return {
      type: CONDITIONS.progressing,
      status: "False",
      reason: "UpToDate",
      message: "serving the desired engine",
    };
  })();

  // Ready is derived from the other three, in one place.
  const blocking = [engine, available].find((c) => c.status !== "True");
  const ready: ConditionInput =
    !blocking && progressing.reason === "UpToDate"
      ? { type: CONDITIONS.ready, status: "True", reason: "Ready", message: "serving the desired engine" }
      : {
          type: CONDITIONS.ready,
          status: "False",
          reason: blocking?.reason ?? progressing.reason,
          message: blocking?.message ?? progressing.message ?? "",
        };

  const phase: InferenceModelPhase = (() => {
    if (engine.reason === "PreflightFailed" || engine.reason === "BuildFailed")
      return anyServing ? "Degraded" : "Failed";
    if (engine.reason === "ResolvingRevision" || engine.reason === "NoMatchingNodes") return "Pending";
    if (engine.status !== "True") return "Building";
    if (stuck) return "Degraded";
    if (ready.status === "True") return "Ready";
    return "Deploying";
  })();

  let conditions: Condition[] | undefined = previous.conditions;
  for (const c of [engine, available, progressing, ready])
    conditions = setCondition(conditions, c, generation, now);

  const servingKeys = targetStatus.flatMap((t) => (t.servingEngine ? [shortKey(t.servingEngine.key)] : []));
  return {
    phase,
    observedGeneration: generation,
    ...(engine.status === "False" || engine.status === "Unknown"
      ? { message: engine.message }
      : { message: progressing.message }),
    ...(input.revision ? { model: { source: model.spec.model.source, revision: input.revision } } : {}),
    targets: targetStatus,
    ...(servingKeys.length ? { engine: servingKeys.join(",") } : {}),
    replicas: desiredReplicas,
    readyReplicas,
    ready: `${readyReplicas}/${desiredReplicas}`,
    ...(input.endpoint ? { endpoint: input.endpoint } : {}),
    conditions,
  };
}

const pick = (ref: EngineRef): Partial<EngineRef> => ({
  ...(ref.builtAt ? { builtAt: ref.builtAt } : {}),
  ...(ref.toolchain ? { toolchain: ref.toolchain } : {}),
});

/** Conditions whose status or reason changed: each becomes an Event. */
export function conditionTransitions(
  before: readonly Condition[] | undefined,
  after: readonly Condition[] | undefined,
) {
  return (after ?? []).filter((c) => {
    const old = before?.find((b) => b.type === c.type);
    return !old || old.status !== c.status || old.reason !== c.reason;
  });
}
