import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import type { V1Container, V1Pod } from "@kubernetes/client-node";

/**
 * The runner's stand-in for hostPath volumes: processes already see this machine's filesystem, so a
 * hostPath is usable only mounted at its own path (plus any subPath), where the process finds it
 * without remapping; anything else is refused rather than silently reading another directory.
 * `DirectoryOrCreate` creates the directory, as the kubelet does; other types are not checked.
 */
export async function checkHostPathMounts(pod: V1Pod, container: V1Container): Promise<void> {
  const volumes = new Map((pod.spec?.volumes ?? []).map((v) => [v.name, v]));
  for (const mount of container.volumeMounts ?? []) {
    const hostPath = volumes.get(mount.name)?.hostPath;
    if (!hostPath) continue;
    if (hostPath.type === "DirectoryOrCreate") await mkdir(hostPath.path, { recursive: true });
    const source = join(hostPath.path, mount.subPath ?? "");
    if (source !== join(mount.mountPath)) {
      throw new Error(
        `container ${container.name}: hostPath ${source} is mounted at ${mount.mountPath}; the pod runner runs processes on this machine's filesystem and maps a hostPath only onto its own path`,
      );
    }
  }
}
