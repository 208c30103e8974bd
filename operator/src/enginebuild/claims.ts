import type { V1Volume, V1VolumeMount } from "@kubernetes/client-node";
import { PVC_MOUNT_ROOT } from "../../../lib/manifest.js";
import type { EngineBuildSpec } from "../api/enginebuild.js";

/** A PersistentVolumeClaim name: a DNS-1123 subdomain. */
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

/** The build Job's read-only mounts of the claims its pvc:// inputs name. */
export interface ClaimMounts {
  volumes: V1Volume[];
  volumeMounts: V1VolumeMount[];
}

export type ClaimPlan = { ok: true; mounts: ClaimMounts } | { ok: false; errors: string[] };

/** Every input of a build that the builder reads from a claim: the source and a pvc:// calibration set. */
function pvcInputs(spec: EngineBuildSpec): { field: string; uri: string }[] {
  const inputs = [{ field: "spec.model.source", uri: spec.model.source }];
  const dataset = spec.engine.calibration?.dataset;
  if (dataset) inputs.push({ field: "spec.engine.calibration.dataset", uri: dataset });
  return inputs.filter((i) => i.uri.startsWith("pvc://"));
}

function claimOf(field: string, uri: string): { claim: string } | { error: string } {
  const match = /^pvc:\/\/([^/]*)\/(.*)$/.exec(uri);
  if (!match?.[2]) return { error: `${field} ${uri}: expected pvc://<claim>/<path>` };
  const claim = match[1] ?? "";
  if (claim.length > 253 || !DNS1123_SUBDOMAIN.test(claim)) {
    return {
      error: `${field} ${uri}: claim name "${claim}" is not a valid PersistentVolumeClaim name (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most 253 characters)`,
    };
  }
  return { claim };
}

/**
 * Mounts each claim the build reads at `<PVC_MOUNT_ROOT>/<claim>`, read-only: the build only reads
 * checkpoints, and a read-only claim may be mounted by many pods at once. The claim must live in
 * the EngineBuild's namespace, which is the model's.
 */
export function claimMountsFor(spec: EngineBuildSpec): ClaimPlan {
  const claims: string[] = [];
  const errors: string[] = [];
  for (const { field, uri } of pvcInputs(spec)) {
    const parsed = claimOf(field, uri);
    if ("error" in parsed) errors.push(parsed.error);
    else if (!claims.includes(parsed.claim)) claims.push(parsed.claim);
  }
  if (errors.length) return { ok: false, errors };
  // Volume names are DNS labels (63 characters); claim names may be longer, so index them instead.
  const volumeName = (i: number) => `pvc-${i}`;
  return {
    ok: true,
    mounts: {
      volumes: claims.map((claimName, i) => ({
        name: volumeName(i),
        persistentVolumeClaim: { claimName, readOnly: true },
      })),
      volumeMounts: claims.map((claim, i) => ({
        name: volumeName(i),
        mountPath: `${PVC_MOUNT_ROOT}/${claim}`,
        readOnly: true,
      })),
    },
  };
}
