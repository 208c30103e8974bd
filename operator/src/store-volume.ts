import { fileURLToPath } from "node:url";
import { V1Volume, type V1VolumeMount } from "@kubernetes/client-node";
import { PVC_MOUNT_ROOT } from "../../lib/manifest.js";

/** A Kubernetes volume source without its name: one key, e.g. `{nfs: {server, path}}`. */
export type VolumeSource = Omit<V1Volume, "name">;

/** The volume name of a file:// store in build Jobs and runtime pods (the chart uses it too). */
export const STORE_VOLUME_NAME = "kiln-store";

const SOURCES = V1Volume.getAttributeTypeMap()
  .map((a) => a.name)
  .filter((n) => n !== "name");

// Sources that give each pod its own directory, or one the API fills read-only: the builder would
// publish an engine no runtime pod (nor the operator) ever sees.
const PER_POD_SOURCES = new Set([
  "emptyDir",
  "ephemeral",
  "configMap",
  "secret",
  "downwardAPI",
  "projected",
  "gitRepo",
  "image",
]);

const EXAMPLES =
  "{nfs: {server, path}}, {hostPath: {path, type: Directory}}, {persistentVolumeClaim: {claimName}} or {csi: {driver, volumeAttributes}}";

/** Where a file:// store's directory is mounted: the uri's path, which the builder and runtime open. */
export function storeMountPath(uri: string): string {
  return fileURLToPath(new URL(uri));
}

function checkVolume(volume: unknown, where: string): string[] {
  if (typeof volume !== "object" || volume === null || Array.isArray(volume)) {
    return [`objectStore.volume must be a Kubernetes volume source such as ${EXAMPLES} (${where})`];
  }
  const keys = Object.keys(volume);
  const [source] = keys;
  if (keys.length !== 1 || source === undefined) {
    return [
      `objectStore.volume must hold exactly one volume source (the operator names the volume itself), got ${keys.length ? keys.join(", ") : "none"} (${where})`,
    ];
  }
  if (!SOURCES.includes(source)) {
    return [
      `objectStore.volume.${source}: not a Kubernetes volume source (known: ${SOURCES.join(", ")}) (${where})`,
    ];
  }
  if (PER_POD_SOURCES.has(source)) {
    return [
      `objectStore.volume.${source}: each pod would get its own copy, so build Jobs would publish engines that runtime pods never see; use shared storage such as ${EXAMPLES} (${where})`,
    ];
  }
  const settings = (volume as Record<string, unknown>)[source];
  if (typeof settings !== "object" || settings === null || Array.isArray(settings)) {
    return [`objectStore.volume.${source} must be a mapping of that source's settings (${where})`];
  }
  return [];
}

function checkMountPath(uri: string): string[] {
  let path: string;
  try {
    path = storeMountPath(uri);
  } catch (err) {
    return [
      `objectStore.uri ${uri}: not a local file URI (file:///<absolute path>): ${(err as Error).message}`,
    ];
  }
  if (path === "/" || path.replace(/\/+$/, "") === "") {
    return [`objectStore.uri ${uri}: the store cannot be the root directory; name a directory to mount`];
  }
  const inside = (a: string, b: string) =>
    `${a.replace(/\/+$/, "")}/`.startsWith(`${b.replace(/\/+$/, "")}/`);
  if (inside(path, PVC_MOUNT_ROOT) || inside(PVC_MOUNT_ROOT, path)) {
    return [
      `objectStore.uri ${uri}: overlaps ${PVC_MOUNT_ROOT}, where build Jobs mount the claims of pvc:// inputs; choose another directory`,
    ];
  }
  return [];
}

/**
 * The problems of a store's uri and volume together: a file:// store needs the shared volume that
 * holds it (else every pod sees its own empty directory), and only a file:// store takes one.
 */
export function checkStoreVolume(
  uri: string,
  volume: unknown,
  where: { uri: string; volume: string },
): string[] {
  const isFile = uri.startsWith("file:");
  if (!isFile) {
    return volume === undefined
      ? []
      : [
          `objectStore.volume is set but objectStore.uri ${uri} is not file://: the volume is mounted only for a file:// store; remove objectStore.volume or set objectStore.uri to file:///<path> (${where.volume})`,
        ];
  }
  const problems = checkMountPath(uri);
  if (volume === undefined) {
    problems.push(
      `objectStore.uri ${uri} needs objectStore.volume: the Kubernetes volume that holds the store, shared by every node, e.g. ${EXAMPLES}; the operator mounts it at the uri's path in build Jobs (read-write) and runtime pods (read-only) (${where.volume})`,
    );
  } else {
    problems.push(...checkVolume(volume, where.volume));
  }
  return problems;
}

export interface StoreMounts {
  volumes: V1Volume[];
  volumeMounts: V1VolumeMount[];
}

/** The store's volume and its mount at the uri's path, for a pod's spec; nothing for an s3:// store. */
export function storeMounts(store: { uri: string; volume?: VolumeSource }, readOnly: boolean): StoreMounts {
  if (!store.volume) return { volumes: [], volumeMounts: [] };
  return {
    volumes: [{ ...store.volume, name: STORE_VOLUME_NAME }],
    // readOnly only when true: the API server drops a false one, and a live pod template compares
    // equal to the desired one only without it.
    volumeMounts: [
      { name: STORE_VOLUME_NAME, mountPath: storeMountPath(store.uri), ...(readOnly ? { readOnly } : {}) },
    ],
  };
}
