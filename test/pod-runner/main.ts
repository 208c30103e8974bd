// The pod runner's command line: `tsx test/pod-runner/main.ts --kubeconfig <file> --run-dir <dir>`.
// A development tool (see README.md): it makes this machine a node of a local control plane.
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { KubeConfig } from "@kubernetes/client-node";
import { componentLogger } from "../../lib/logging.js";
import { KubeClient } from "../../operator/src/controller/kube.js";
import { startWatchdog } from "../cluster/watchdog.js";
import { registerNode } from "./node.js";
import { PodRunner, READY_LINE } from "./runner.js";

const { values } = parseArgs({
  options: {
    kubeconfig: { type: "string" },
    "run-dir": { type: "string" },
    "claims-dir": { type: "string" },
    "node-name": { type: "string", default: "kiln-local-gpu-0" },
    "gpu-product": { type: "string", default: "NVIDIA-L4" },
    "sm-arch": { type: "string", default: "sm_89" },
    gpus: { type: "string", default: "1" },
  },
});

const log = componentLogger("pod-runner");
const kubeconfig = values.kubeconfig ?? process.env.KUBECONFIG;
const runDir = values["run-dir"];
if (!kubeconfig || !runDir) {
  process.stderr.write(
    "usage: main.ts --kubeconfig FILE --run-dir DIR [--claims-dir DIR] [--node-name NAME] [--gpu-product LABEL --sm-arch sm_NN --gpus N]\n",
  );
  process.exit(2);
}
await mkdir(runDir, { recursive: true });
const claimsDir = values["claims-dir"] ?? join(runDir, "claims");
await mkdir(claimsDir, { recursive: true });

const kc = new KubeConfig();
kc.loadFromFile(kubeconfig);
const client = new KubeClient(kc);
// If this process dies without its exit handlers (SIGKILL), the watchdog stops its containers.
const watchdog = startWatchdog(runDir);
const node = await registerNode(
  client,
  {
    name: values["node-name"],
    ...(values["gpu-product"] ? { gpuProduct: values["gpu-product"] } : {}),
    ...(values["sm-arch"] ? { smArch: values["sm-arch"] } : {}),
    gpus: Number(values.gpus),
  },
  log,
);
const runner = new PodRunner({ client, nodeName: node.name, runDir, claimsDir, log, onPids: watchdog.track });
await runner.start();
log.info({ node: node.name, runDir, claimsDir }, "node registered and Ready; running its pods");
process.stdout.write(`${READY_LINE}\n`);

let stopping = false;
const shutdown = async (signal: string) => {
  if (stopping) return;
  stopping = true;
  log.info({ signal }, "stopping containers and removing the node");
  await runner.stop();
  await node.stop().catch((err: Error) => log.warn({ err: err.message }, "removing the node failed"));
  process.kill(-watchdog.pid, "SIGKILL");
  process.exit(0);
};
process.once("SIGTERM", () => void shutdown("SIGTERM"));
process.once("SIGINT", () => void shutdown("SIGINT"));
