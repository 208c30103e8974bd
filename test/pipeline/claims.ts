import type { KubeClient, KubeObject, ResourceType } from "../../operator/src/controller/kube.js";
import { waitUntil } from "../cluster/wait.js";

// The PersistentVolumeClaim a pvc:// model source names, as a cluster admin would provide it: a
// PersistentVolume pre-bound to a claim in the model's namespace. The scheduler places a build pod
// only once its claims are Bound; the pod runner then maps the mount to the claims folder.

export const PV: ResourceType = {
  apiVersion: "v1",
  kind: "PersistentVolume",
  plural: "persistentvolumes",
  namespaced: false,
};
export const PVC: ResourceType = {
  apiVersion: "v1",
  kind: "PersistentVolumeClaim",
  plural: "persistentvolumeclaims",
  namespaced: true,
};

/** Name of the PersistentVolume that backs `claim` in `namespace`. */
export const volumeNameFor = (namespace: string, claim: string) => `${namespace}-${claim}`.slice(0, 253);

/**
 * Creates the claim `claim` in `namespace`, bound to a hostPath volume at `hostDir`, and waits until
 * the PersistentVolume controller has bound it. ReadOnlyMany: every build reads the same checkpoint.
 */
export async function provideClaim(
  client: KubeClient,
  namespace: string,
  claim: string,
  hostDir: string,
  timeoutMs: number,
): Promise<void> {
  const volumeName = volumeNameFor(namespace, claim);
  const common = { accessModes: ["ReadOnlyMany"], storageClassName: "" };
  await client.create(PV, {
    apiVersion: "v1",
    kind: "PersistentVolume",
    metadata: { name: volumeName },
    spec: {
      ...common,
      capacity: { storage: "1Gi" },
      hostPath: { path: hostDir, type: "Directory" },
      claimRef: { namespace, name: claim },
      persistentVolumeReclaimPolicy: "Retain",
    },
  } as KubeObject);
  await client.create(PVC, {
    apiVersion: "v1",
    kind: "PersistentVolumeClaim",
    metadata: { name: claim, namespace },
    spec: { ...common, volumeName, resources: { requests: { storage: "1Gi" } } },
  } as KubeObject);
  await waitUntil(
    `PersistentVolumeClaim ${namespace}/${claim} Bound`,
    async () =>
      (await client.get<KubeObject & { status?: { phase?: string } }>(PVC, namespace, claim))?.status
        ?.phase === "Bound",
    { timeoutMs, intervalMs: 100 },
  );
}
