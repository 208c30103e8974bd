import { hostname } from "node:os";
import type { Logger } from "pino";
import { isConflict, isNotFound, type KubeClient, resourcePath } from "../../operator/src/controller/kube.js";
import { gpuProductLabel, gpuResource, smArchLabel } from "../cluster/gpu-nodes.js";
import { NODE, NODE_LEASE } from "./resources.js";

/** Every node of this runner carries it; operator configs select the runner's node with it. */
export const podRunnerLabel = "kiln.dev/pod-runner";

export interface LocalNodeSpec {
  name: string;
  /** `nvidia.com/gpu.product` label; none for a node that only offers the CPU. */
  gpuProduct?: string;
  smArch?: string;
  gpus: number;
}

const LEASE_SECONDS = 40;
const RENEW_MS = 10_000;

/**
 * The Node object as the kubelet would register it. No `kwok.x-k8s.io/node` annotation: kwok would
 * otherwise also "run" its pods. Capacity is generous because the scheduler only needs to admit
 * the operator's pods; what they really use is this machine's.
 */
export function localNodeManifest(spec: LocalNodeSpec) {
  const resources = {
    cpu: "16",
    memory: "64Gi",
    "ephemeral-storage": "100Gi",
    pods: "110",
    ...(spec.gpus > 0 ? { [gpuResource]: String(spec.gpus) } : {}),
  };
  return {
    apiVersion: "v1",
    kind: "Node",
    metadata: {
      name: spec.name,
      labels: {
        "kubernetes.io/hostname": spec.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": process.arch === "arm64" ? "arm64" : "amd64",
        [podRunnerLabel]: spec.name,
        ...(spec.gpuProduct ? { [gpuProductLabel]: spec.gpuProduct } : {}),
        ...(spec.smArch ? { [smArchLabel]: spec.smArch } : {}),
      },
    },
    spec: {},
    status: { capacity: resources, allocatable: resources },
  };
}

function readyStatus(now: string, ready: boolean) {
  const condition = (type: string, status: string, reason: string, message: string) => ({
    type,
    status,
    reason,
    message,
    lastHeartbeatTime: now,
    lastTransitionTime: now,
  });
  return {
    conditions: [
      condition(
        "Ready",
        ready ? "True" : "False",
        ready ? "KubeletReady" : "KubeletStopped",
        ready ? "kiln pod runner is running" : "kiln pod runner stopped",
      ),
      condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "pod runner"),
      condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "pod runner"),
      condition("PIDPressure", "False", "KubeletHasSufficientPID", "pod runner"),
    ],
    addresses: [
      { type: "InternalIP", address: "127.0.0.1" },
      { type: "Hostname", address: hostname() },
    ],
    nodeInfo: {
      kubeletVersion: "kiln-pod-runner",
      kubeProxyVersion: "",
      operatingSystem: "linux",
      architecture: process.arch,
      containerRuntimeVersion: "kiln-pod-runner://local-processes",
      osImage: "local",
      kernelVersion: "",
      bootID: "",
      machineID: "",
      systemUUID: "",
    },
  };
}

/**
 * Registers the node (replacing a leftover one of a previous run), marks it Ready and renews its
 * Lease in kube-node-lease every 10 s, which is the heartbeat the node lifecycle controller watches.
 */
export async function registerNode(client: KubeClient, spec: LocalNodeSpec, log: Logger) {
  const manifest = localNodeManifest(spec);
  let node: { metadata: { uid: string } };
  try {
    node = await client.request("POST", resourcePath(NODE), manifest);
  } catch (err) {
    if (!isConflict(err)) throw new Error(`registering node ${spec.name}: ${(err as Error).message}`);
    // A node of the same name from an earlier run: its pods belong to processes that are gone.
    await client.request("DELETE", resourcePath(NODE, undefined, spec.name), { gracePeriodSeconds: 0 });
    node = await client.request("POST", resourcePath(NODE), manifest);
  }
  const patchStatus = (ready: boolean) =>
    client.request(
      "PATCH",
      resourcePath(NODE, undefined, spec.name, "status"),
      { status: { ...manifest.status, ...readyStatus(new Date().toISOString(), ready) } },
      "application/strategic-merge-patch+json",
    );
  await patchStatus(true);

  const leasePath = resourcePath(NODE_LEASE, "kube-node-lease", spec.name);
  const renew = async () => {
    const lease = {
      apiVersion: "coordination.k8s.io/v1",
      kind: "Lease",
      metadata: {
        name: spec.name,
        namespace: "kube-node-lease",
        ownerReferences: [{ apiVersion: "v1", kind: "Node", name: spec.name, uid: node.metadata.uid }],
      },
      spec: {
        holderIdentity: spec.name,
        leaseDurationSeconds: LEASE_SECONDS,
        renewTime: new Date().toISOString().replace("Z", "000Z"),
      },
    };
    try {
      await client.request(
        "PATCH",
        `${leasePath}?fieldManager=kiln-pod-runner&force=true`,
        lease,
        "application/apply-patch+yaml",
      );
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  };
  await renew();
  const timer = setInterval(() => {
    renew().catch((err: Error) => log.warn({ err: err.message }, "node lease renewal failed"));
  }, RENEW_MS);

  return {
    name: spec.name,
    /** Stops the heartbeat and removes the node; the pod garbage collector then removes its pods. */
    async stop(): Promise<void> {
      clearInterval(timer);
      try {
        await client.request("DELETE", resourcePath(NODE, undefined, spec.name), { gracePeriodSeconds: 0 });
      } catch (err) {
        if (!isNotFound(err)) throw err;
      }
    },
  };
}
