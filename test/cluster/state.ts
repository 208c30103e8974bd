import { readFile, writeFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { ClusterInfo } from "./launcher.js";

// `up` leaves a cluster running for humans; it records what it started here so `down` (or a test run
// with KILN_USE_RUNNING_CLUSTER=1) can find it. The folder is gitignored.
export const defaultUpRunDir = resolve(dirname(fileURLToPath(import.meta.url)), "../../.kiln-run/cluster");

const stateFile = (runDir: string) => join(runDir, "state.json");

export async function writeClusterState(info: ClusterInfo): Promise<string> {
  const path = stateFile(info.runDir);
  await writeFile(path, `${JSON.stringify(info, null, 2)}\n`, { mode: 0o600 });
  return path;
}

/** The recorded cluster of a run dir, or undefined when there is none. */
export async function readClusterState(runDir: string): Promise<ClusterInfo | undefined> {
  try {
    return JSON.parse(await readFile(stateFile(runDir), "utf8")) as ClusterInfo;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new Error(`reading ${stateFile(runDir)}: ${(err as Error).message}`);
  }
}
