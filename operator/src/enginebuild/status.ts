import { type ConditionInput, setCondition } from "../api/conditions.js";
import type { EngineBuildPhase, EngineBuildStatus } from "../api/enginebuild.js";
import type { EngineBuild } from "../api/types.js";

export const BUILD_CONDITIONS = { ready: "Ready", building: "Building" } as const;

/**
 * The next status: `patch` over the current one, with phase-derived Ready/Building conditions.
 * Ready is True only for Succeeded; Building is True only while a Job runs.
 */
export function nextStatus(
  build: EngineBuild,
  phase: EngineBuildPhase,
  reason: string,
  message: string,
  patch: Partial<EngineBuildStatus>,
  now: Date,
): EngineBuildStatus {
  const current = build.status ?? {};
  const generation = build.metadata.generation;
  const ready: ConditionInput = {
    type: BUILD_CONDITIONS.ready,
    status: phase === "Succeeded" ? "True" : "False",
    reason,
    message,
  };
  const building: ConditionInput = {
    type: BUILD_CONDITIONS.building,
    status: phase === "Running" ? "True" : "False",
    reason,
    message,
  };
  let conditions = setCondition(current.conditions, ready, generation, now);
  conditions = setCondition(conditions, building, generation, now);
  // A finished build's last progress says where a failed one stopped; a succeeded one has the
  // artifact instead, and a percent frozen mid-compile would only mislead.
  const { queuePosition: _q, nextAttemptAt: _n, progress, ...rest } = current;
  return {
    ...(progress && phase !== "Succeeded" ? { progress } : {}),
    ...rest,
    ...patch,
    phase,
    message,
    observedGeneration: generation,
    conditions,
  };
}
