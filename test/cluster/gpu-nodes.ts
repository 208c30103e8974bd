import type { CoreV1Api, V1Node } from "@kubernetes/client-node";
import { kwokNodeAnnotation } from "./control-plane.js";
import { waitUntil } from "./wait.js";

/** A simulated GPU node: kwok keeps it Ready and runs the pods scheduled onto it. */
export interface FakeGpuNode {
  name: string;
  /** Value of the `nvidia.com/gpu.product` label, as GPU feature discovery writes it. */
  product: string;
  /** Value of the `kiln.dev/sm-arch` label, e.g. sm_90. */
  smArch: string;
  /** `nvidia.com/gpu` capacity. */
  gpus: number;
}

export const gpuProductLabel = "nvidia.com/gpu.product";
export const smArchLabel = "kiln.dev/sm-arch";
export const gpuResource = "nvidia.com/gpu";

/** Two 8-GPU H100 nodes and one 8-GPU A100 node, so tests can target an arch and see placement. */
export const defaultGpuNodes: readonly FakeGpuNode[] = [
  { name: "kiln-h100-0", product: "NVIDIA-H100-80GB-HBM3", smArch: "sm_90", gpus: 8 },
  { name: "kiln-h100-1", product: "NVIDIA-H100-80GB-HBM3", smArch: "sm_90", gpus: 8 },
  { name: "kiln-a100-0", product: "NVIDIA-A100-SXM4-80GB", smArch: "sm_80", gpus: 8 },
];

export function gpuNodeManifest(node: FakeGpuNode): V1Node {
  const resources = {
    cpu: "96",
    memory: "1024Gi",
    "ephemeral-storage": "2Ti",
    pods: "110",
    [gpuResource]: String(node.gpus),
  };
  return {
    apiVersion: "v1",
    kind: "Node",
    metadata: {
      name: node.name,
      annotations: { [kwokNodeAnnotation.key]: kwokNodeAnnotation.value },
      labels: {
        "kubernetes.io/hostname": node.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        type: "kwok",
        [gpuProductLabel]: node.product,
        [smArchLabel]: node.smArch,
      },
    },
    status: { capacity: resources, allocatable: resources },
  };
}

const isReady = (node: V1Node) =>
  node.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True") ?? false;

/** Registers the nodes and waits until kwok reports each of them Ready. */
export async function createGpuNodes(
  core: CoreV1Api,
  nodes: readonly FakeGpuNode[],
  options: { timeoutMs: number; abort?: Promise<string> },
): Promise<void> {
  await Promise.all(
    nodes.map(async (node) => {
      try {
        await core.createNode({ body: gpuNodeManifest(node) });
      } catch (err) {
        throw new Error(`creating fake GPU node ${node.name}: ${(err as Error).message}`);
      }
    }),
  );
  const names = new Set(nodes.map((n) => n.name));
  await waitUntil(
    `fake GPU nodes ${[...names].join(", ")} Ready`,
    async () =>
      (await core.listNode()).items.filter((n) => names.has(n.metadata?.name ?? "") && isReady(n)).length ===
      names.size,
    { ...options, intervalMs: 200 },
  );
}
