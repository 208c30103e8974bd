import { mkdir, symlink } from "node:fs/promises";
import { dirname, join, relative } from "node:path";
import type { V1Container, V1Pod } from "@kubernetes/client-node";
import { PVC_MOUNT_ROOT } from "../../lib/manifest.js";

/**
 * The runner's stand-in for mounting PersistentVolumeClaims: processes see the host filesystem, so
 * a claim mounted at `<PVC_MOUNT_ROOT>/<x>` becomes the link `<into>/<x>` to `<claimsDir>/<claim>`
 * (plus any subPath), and the container gets `<into>` as its KILN_PVC_ROOT. Only claims the pod
 * mounts are linked, so a pod that forgot a mount fails here as it would on a real node. Read-only
 * is not enforced.
 */
export async function linkClaimMounts(
  pod: V1Pod,
  container: V1Container,
  claimsDir: string,
  into: string,
): Promise<string> {
  await mkdir(into, { recursive: true });
  const volumes = new Map((pod.spec?.volumes ?? []).map((v) => [v.name, v]));
  for (const mount of container.volumeMounts ?? []) {
    const claim = volumes.get(mount.name)?.persistentVolumeClaim?.claimName;
    if (!claim) continue;
    const inside = relative(PVC_MOUNT_ROOT, mount.mountPath);
    if (inside === "" || inside.startsWith("..")) {
      throw new Error(
        `container ${container.name}: claim ${claim} is mounted at ${mount.mountPath}; the pod runner maps claims only under ${PVC_MOUNT_ROOT}/`,
      );
    }
    const link = join(into, inside);
    await mkdir(dirname(link), { recursive: true });
    await symlink(join(claimsDir, claim, mount.subPath ?? ""), link);
  }
  return into;
}
