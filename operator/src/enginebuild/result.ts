import type { V1Pod } from "@kubernetes/client-node";
import { type EngineManifest, parseBuildResult, validateManifest } from "../../../lib/manifest.js";

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

/** The builder container's termination message from the Job's pods (newest first), if any. */
export function terminationMessage(pods: readonly V1Pod[]): string | undefined {
  const newestFirst = [...pods].sort((a, b) =>
    String(b.metadata?.creationTimestamp ?? "").localeCompare(String(a.metadata?.creationTimestamp ?? "")),
  );
  for (const pod of newestFirst) {
    const status = pod.status?.containerStatuses?.find((c) => c.name === "builder");
    const message = status?.state?.terminated?.message;
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

/** The tuning summary: the manifest is authoritative, the termination message a fallback. */
export function tuningSummary(
  check: ManifestCheck,
  message: string | undefined,
): Record<string, unknown> | undefined {
  if (check.state === "valid" && check.manifest.tuning) return check.manifest.tuning;
  const result = parseBuildResult(message);
  return result.ok ? result.value.tuning : undefined;
}
