import type { TestProject } from "vitest/node";
import { clusterEnvVars } from "./env-vars.js";
import { type ClusterInfo, clusterInfoOf, startCluster } from "./launcher.js";
import { defaultUpRunDir, readClusterState } from "./state.js";

// vitest globalSetup of the cluster and pipeline tiers: one real control plane + S3 server per tier
// run, handed to tests through provide/inject (see env.ts) and the KILN_* environment variables.
export default async function setup(project: TestProject): Promise<(() => Promise<void>) | undefined> {
  if (process.env.KILN_USE_RUNNING_CLUSTER === "1") {
    // Reuse the cluster of `test/cluster/up` for a quick edit-and-rerun loop; `down` stops it.
    const running = await readClusterState(process.env.KILN_CLUSTER_RUN_DIR ?? defaultUpRunDir);
    if (!running) throw new Error("KILN_USE_RUNNING_CLUSTER=1 but no cluster is up; run test/cluster/up");
    expose(project, running);
    return undefined;
  }
  const cluster = await startCluster();
  expose(project, clusterInfoOf(cluster));
  return async () => {
    // Logs of a failed run stay on disk (their folder is printed); a green run leaves nothing behind.
    const failed = project.vitest.state.getCountOfFailedTests() > 0;
    await cluster.stop({ keepLogs: failed });
  };
}

function expose(project: TestProject, cluster: ClusterInfo): void {
  project.provide("kilnCluster", cluster);
  Object.assign(process.env, clusterEnvVars(cluster));
}
