import type { V1Pod } from "@kubernetes/client-node";
import { type EngineManifest, parseBuildResult, validateManifest } from "../../../lib/manifest.js";
import { BUILDER_CONTAINER } from "./job.js";

/** What object storage says about an engine key. */
export type ManifestCheck =
  | { state: "valid"; manifest: EngineManifest; engineUri: string }
  | { state: "missing" }
  | { state: "invalid"; errors: string[] };

/** Parse manifest.json bytes (or their absence) for `key`. */
export function checkManifest(body: Buffer | undefined, key: string, engineUri: string): ManifestCheck {
  if (!body) return { state: "missing" };
  let value: unknown;
  try {
    value = JSON.parse(body.toString("utf8"));
  } catch {
    return { state: "invalid", errors: ["manifest.json is not JSON"] };
  }
  const v = validateManifest(value, key);
  return v.ok ? { state: "valid", manifest: v.value, engineUri } : { state: "invalid", errors: v.errors };
}

const newestFirst = (pods: readonly V1Pod[]) =>
  [...pods].sort((a, b) =>
    String(b.metadata?.creationTimestamp ?? "").localeCompare(String(a.metadata?.creationTimestamp ?? "")),
  );

/** How the builder container of `pod` ended, if it has (restartPolicy Never: its state is its end). */
const builderEnd = (pod: V1Pod) =>
  pod.status?.containerStatuses?.find((c) => c.name === BUILDER_CONTAINER)?.state?.terminated;

/** The builder container's termination message from the Job's pods (newest first), if any. */
export function terminationMessage(pods: readonly V1Pod[]): string | undefined {
  for (const pod of newestFirst(pods)) {
    const message = builderEnd(pod)?.message;
    if (message) return message;
  }
  return undefined;
}

/**
 * The builder's own account of a failure, from its termination message (`{"error": ...}`): what
 * went wrong in words a user can act on, where the Job's condition only names the exit code.
 */
export function builderError(message: string | undefined): string | undefined {
  if (!message) return undefined;
  try {
    const parsed = JSON.parse(message) as { error?: unknown };
    return typeof parsed.error === "string" && parsed.error ? parsed.error : undefined;
  } catch {
    return undefined;
  }
}

/** The builder's last death by the kernel's OOM killer, with the memory limit its pod had (if any). */
export interface BuilderOomKill {
  memoryLimit: string | undefined;
}

/**
 * Whether the builder of the Job's newest pod that has finished was OOM-killed. The Job's own
 * condition only says its backoff limit was reached, and the termination message is then the log
 * tail (FallbackToLogsOnError): the container status is the one place that names the cause.
 */
export function builderOomKill(pods: readonly V1Pod[]): BuilderOomKill | undefined {
  for (const pod of newestFirst(pods)) {
    const terminated = builderEnd(pod);
    if (!terminated) continue;
    if (terminated.reason !== "OOMKilled") return undefined;
    const container = pod.spec?.containers.find((c) => c.name === BUILDER_CONTAINER);
    return { memoryLimit: container?.resources?.limits?.memory };
  }
  return undefined;
}

/**
 * An OOM-killed attempt in words a user can act on: the limit it hit and the setting that raises
 * it, sized by what the builder holds (the weights as fp32, whatever the precision: fp8 calibrates
 * on those same weights).
 */
export function oomKillMessage(oom: BuilderOomKill): string {
  const needs = "a build needs about 4 bytes per model parameter";
  return oom.memoryLimit
    ? `builder OOMKilled at its memory limit ${oom.memoryLimit}: raise defaults.builderResources.limits.memory and requests.memory; ${needs}`
    : `builder OOMKilled with no memory limit, its node out of memory: set defaults.builderResources.requests.memory and limits.memory; ${needs}`;
}

/** The tuning summary: the manifest is authoritative, the termination message a fallback. */
export function tuningSummary(
  check: ManifestCheck,
  message: string | undefined,
): Record<string, unknown> | undefined {
  if (check.state === "valid" && check.manifest.tuning) return check.manifest.tuning;
  const result = parseBuildResult(message);
  return result.ok ? result.value.tuning : undefined;
}
