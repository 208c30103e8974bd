import { join } from "node:path";
import { fileURLToPath } from "node:url";

// The one place that says which image runs what. A container image is a filesystem plus an
// entrypoint; here the filesystem is this checkout and the entrypoint is the repo's built one.

export const repoRoot = fileURLToPath(new URL("../..", import.meta.url));

/** What an image would provide: ENTRYPOINT, CMD, WORKDIR and ENV (pod env overrides image env). */
export interface ImageEntry {
  /**
   * Repository paths (no registry or tag) that name the image: a path matches when it is one of
   * them or ends in `/<one of them>` (the chart's default is `ghcr.io/kiln-dev/kiln-builder`).
   */
  repositories: string[];
  /** The image's ENTRYPOINT as a local command line. */
  entrypoint(): string[];
  /** Names a pod's `command` may use for that entrypoint (its path inside the image, or its name). */
  entrypointAliases: string[];
  /**
   * ENV the image sets, given the container's private scratch folder (its writable layer) and the
   * folder holding the claims the pod mounts (claims.ts).
   */
  env(paths: { scratch: string; claims: string }): Record<string, string>;
}

const runtimeMain = join(repoRoot, "runtime-image/src/main.ts");

export const IMAGES: readonly ImageEntry[] = [
  {
    repositories: ["kiln/builder", "kiln-builder"],
    entrypoint: () => [join(repoRoot, "builder-image/bin/kiln-build")],
    entrypointAliases: ["kiln-build", "/app/builder-image/bin/kiln-build"],
    env: ({ scratch, claims }) => ({
      // In a cluster claims are mounted under PVC_MOUNT_ROOT; here under the container's folder.
      KILN_PVC_ROOT: claims,
      KILN_WORK_DIR: join(scratch, "work"),
    }),
  },
  {
    repositories: ["kiln/runtime", "kiln-runtime"],
    // The image runs the compiled main.js; from a checkout the same file runs through tsx.
    entrypoint: () => [process.execPath, "--enable-source-maps", "--import", "tsx", runtimeMain],
    entrypointAliases: [],
    env: ({ scratch }) => ({
      // The Dockerfile's ENV points the cache at an emptyDir; here the container's scratch folder.
      KILN_CACHE_DIR: join(scratch, "cache"),
      // Loopback only: a pod's port is reachable on 127.0.0.1 (see the README), nowhere else.
      HOST: "127.0.0.1",
    }),
  },
];

/** `ghcr.io/kiln/builder:0.1.0@sha256:…` → `kiln/builder`. */
export function repositoryOf(image: string): string {
  const withoutDigest = image.split("@")[0] ?? image;
  const lastSlash = withoutDigest.lastIndexOf("/");
  const colon = withoutDigest.lastIndexOf(":");
  const name = colon > lastSlash ? withoutDigest.slice(0, colon) : withoutDigest;
  const parts = name.split("/");
  // A first component with a dot, a colon or `localhost` is a registry host, not part of the path.
  const first = parts[0] ?? "";
  if (parts.length > 1 && (first.includes(".") || first.includes(":") || first === "localhost"))
    parts.shift();
  return parts.join("/");
}

export function imageEntryFor(image: string): ImageEntry | undefined {
  const repo = repositoryOf(image);
  return IMAGES.find((e) => e.repositories.some((r) => repo === r || repo.endsWith(`/${r}`)));
}

/**
 * The local argv for a container, with Docker's rules: `command` replaces ENTRYPOINT (it must name
 * the image's entrypoint, since no other program of the image exists here) and `args` replace CMD.
 */
export function commandLineFor(
  entry: ImageEntry,
  container: { image?: string; command?: string[]; args?: string[] },
): string[] {
  const [program, ...rest] = container.command ?? [];
  if (program !== undefined && !entry.entrypointAliases.includes(program)) {
    throw new Error(
      `container command ${JSON.stringify(program)} of image ${container.image} is not its entrypoint (${entry.entrypointAliases.join(", ")}); the pod runner can only run the image's entrypoint`,
    );
  }
  return [...entry.entrypoint(), ...rest, ...(container.args ?? [])];
}
