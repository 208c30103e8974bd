// What the informers keep of each object. The caches hold every watched object for the process's
// life, so a field nothing reads is memory paid per object; these keep what the reconcilers and
// watch handlers read (operator/test/cache-trim.test.ts checks that their results do not change).
import type { V1Job, V1Node } from "@kubernetes/client-node";
import type { KubeObject } from "./kube.js";

export type CacheTransform<T> = (obj: T) => T;

const LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration";

/**
 * Every kind: managedFields (often the largest part of an object) and kubectl's last-applied copy
 * of the whole object. Nothing here reads either, and a write that omits managedFields keeps the
 * server's copy. Deployments and Services keep everything else: applyChild compares the desired
 * object with the cached one field by field.
 */
export function trimMetadata<T extends KubeObject>(obj: T): T {
  const meta = obj.metadata as (KubeObject["metadata"] & { managedFields?: unknown }) | undefined;
  if (!meta) return obj;
  delete meta.managedFields;
  if (meta.annotations && LAST_APPLIED in meta.annotations) {
    const { [LAST_APPLIED]: _, ...rest } = meta.annotations;
    meta.annotations = rest;
  }
  return obj;
}

/**
 * Nodes: the GPU inventory reads labels and allocatable. Real nodes also carry their image list,
 * conditions, addresses, system info and many annotations, which on a large fleet outweigh
 * everything else cached.
 */
export function trimNode<T extends V1Node & KubeObject>(node: T): T {
  const meta = node.metadata ?? {};
  return {
    apiVersion: node.apiVersion,
    kind: node.kind,
    metadata: {
      name: meta.name,
      uid: meta.uid,
      resourceVersion: meta.resourceVersion,
      labels: meta.labels,
    },
    status: { allocatable: node.status?.allocatable },
  } as T;
}

/**
 * Jobs: the EngineBuild reconcile reads metadata (name, labels, owners) and status (conditions,
 * start time); never the spec, whose pod template carries the whole build spec as an env var.
 */
export function trimJob<T extends V1Job & KubeObject>(job: T): T {
  const { spec: _, ...rest } = trimMetadata(job);
  return rest as T;
}
