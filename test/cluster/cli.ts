import { rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { binaryPath } from "./binaries.js";
import { clusterEnvVars } from "./env-vars.js";
import { type ClusterInfo, clusterInfoOf, startCluster } from "./launcher.js";
import { commandOf, isAlive, stopProcesses } from "./processes.js";
import { defaultUpRunDir, readClusterState, writeClusterState } from "./state.js";

// `test/cluster/up` and `test/cluster/down`: a cluster for humans that outlives the command.

const runDir = process.env.KILN_CLUSTER_RUN_DIR ?? defaultUpRunDir;
const print = (line = "") => process.stdout.write(`${line}\n`);

/** Recorded processes that are still the very programs we started (a pid can be reused after exit). */
function ownLiveProcesses(info: ClusterInfo): ClusterInfo["processes"] {
  return info.processes.filter((p) => isAlive(p.pid) && commandOf(p.pid) === p.command);
}

async function up(): Promise<void> {
  const previous = await readClusterState(runDir);
  if (previous && ownLiveProcesses(previous).length > 0) {
    throw new Error(`a cluster is already up in ${runDir}; run test/cluster/down first`);
  }
  await rm(runDir, { recursive: true, force: true });
  const cluster = await startCluster({ runDir, stopWithParent: false });
  const info = clusterInfoOf(cluster);
  const statePath = await writeClusterState(info);
  const envFile = join(runDir, "cluster.env");
  const env = clusterEnvVars(info);
  await writeFile(
    envFile,
    Object.entries({ ...env, KUBECONFIG: info.kubeconfigPath })
      .map(([name, value]) => `export ${name}='${value}'\n`)
      .join(""),
    { mode: 0o600 },
  );
  print();
  print(`Cluster up in ${(info.startupMs / 1000).toFixed(1)} s. State: ${statePath}`);
  print(`  apiserver   ${info.apiServerUrl}`);
  print(`  kubeconfig  ${info.kubeconfigPath}`);
  print(`  kubectl     ${binaryPath("kubectl")} --kubeconfig ${info.kubeconfigPath} get nodes`);
  print(`  S3          ${info.s3.endpoint} bucket ${info.s3.bucket} (credentials in ${envFile})`);
  print(`  logs        ${info.logDir}`);
  for (const p of info.processes) print(`  pid ${String(p.pid).padEnd(8)} ${p.name}`);
  print();
  print(`Use it:     source ${envFile}   (sets KUBECONFIG and KILN_*)`);
  print("Tests:      KILN_USE_RUNNING_CLUSTER=1 npx vitest run --project cluster");
  print("Stop it:    test/cluster/down");
}

async function down(): Promise<void> {
  const info = await readClusterState(runDir);
  if (!info) {
    print(`no cluster recorded in ${runDir}; nothing to stop`);
    return;
  }
  const live = ownLiveProcesses(info);
  await stopProcesses(live.map((p) => p.pid));
  await Promise.all(
    ["etcd", "s3", "pki", "state.json", "cluster.env", "admin.kubeconfig"].map((entry) =>
      rm(join(runDir, entry), { recursive: true, force: true }),
    ),
  );
  print(`stopped ${live.map((p) => `${p.name} (${p.pid})`).join(", ") || "nothing (all had exited)"}`);
  print(`logs kept in ${info.logDir}`);
}

const command = process.argv[2];
const commands: Record<string, () => Promise<void>> = { up, down };
const run = command ? commands[command] : undefined;
if (!run) {
  process.stderr.write("usage: cli.ts up|down\n");
  process.exit(2);
}
run().catch((err: Error) => {
  process.stderr.write(`test/cluster ${command}: ${err.message}\n`);
  process.exit(1);
});
