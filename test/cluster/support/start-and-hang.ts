import { startCluster } from "../launcher.js";

// Fixture for the launcher test: starts a cluster, reports its pids on stdout, then idles until it
// is killed, as a crashed test runner would be.
const cluster = await startCluster({ gpuNodes: [], log: () => undefined });
process.stdout.write(`${JSON.stringify({ pids: cluster.pids, runDir: cluster.runDir })}\n`);
setInterval(() => undefined, 60_000);
