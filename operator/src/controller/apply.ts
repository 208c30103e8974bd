import type { EventSink } from "./events.js";
import type { KubeClient, KubeObject, OwnerReference, ResourceType } from "./kube.js";

/**
 * Semantic "already as desired": every field the operator sets has the same value on the live
 * object. Fields the API server or other controllers add (defaults, status, managedFields) are
 * ignored, so an unchanged desired state never causes a write.
 */
export function isSubset(desired: unknown, actual: unknown): boolean {
  if (desired === undefined) return true;
  if (desired === null || typeof desired !== "object") return sameScalar(desired, actual);
  if (Array.isArray(desired)) {
    return (
      Array.isArray(actual) &&
      actual.length === desired.length &&
      desired.every((d, i) => isSubset(d, actual[i]))
    );
  }
  if (actual === null || typeof actual !== "object" || Array.isArray(actual)) return false;
  const a = actual as Record<string, unknown>;
  return Object.entries(desired as Record<string, unknown>).every(([k, v]) => isSubset(v, a[k]));
}

// The API server echoes int-or-string and quantities in its own spelling ("1" vs 1).
function sameScalar(desired: unknown, actual: unknown): boolean {
  if (desired === actual) return true;
  return (
    (typeof desired === "number" || typeof desired === "string") &&
    (typeof actual === "number" || typeof actual === "string") &&
    String(desired) === String(actual)
  );
}

export function ownerReference(owner: KubeObject, controller: boolean): OwnerReference {
  const meta = owner.metadata ?? {};
  if (!owner.apiVersion || !owner.kind || !meta.name || !meta.uid) {
    throw new Error(`ownerReference: ${owner.kind}/${meta.name} has no apiVersion, kind, name or uid`);
  }
  return {
    apiVersion: owner.apiVersion,
    kind: owner.kind,
    name: meta.name,
    uid: meta.uid,
    ...(controller ? { controller: true, blockOwnerDeletion: true } : {}),
  };
}

export type ApplyOutcome = "created" | "updated" | "unchanged";

/**
 * Create-or-update one child by server-side apply, skipping the write when the live object already
 * matches; an Event on `owner` names every change.
 */
export async function applyChild<T extends KubeObject>(
  client: Pick<KubeClient, "apply">,
  rt: ResourceType,
  desired: T,
  live: T | undefined,
  owner: KubeObject,
  events: EventSink,
): Promise<ApplyOutcome> {
  if (live && isSubset(desired, live)) return "unchanged";
  await client.apply(rt, desired);
  const outcome = live ? "updated" : "created";
  events.emit(
    owner,
    "Normal",
    outcome === "created" ? "Created" : "Updated",
    `${outcome} ${rt.kind} ${desired.metadata?.name}`,
  );
  return outcome;
}

/** Owned by `owner` (any owner reference, controller or not)? */
export const isOwnedBy = (obj: KubeObject, owner: KubeObject) =>
  (obj.metadata?.ownerReferences ?? []).some((r) => r.uid === owner.metadata?.uid);
