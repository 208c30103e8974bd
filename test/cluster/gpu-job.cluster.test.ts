import { BatchV1Api, CoreV1Api, type V1Job, type V1Pod } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { testKubeConfig } from "./env.js";
import { defaultGpuNodes, gpuProductLabel, gpuResource, smArchLabel } from "./gpu-nodes.js";
import { watchUntil } from "./support/watch.js";

const namespace = `gpu-job-${process.pid}`;
const h100Nodes = defaultGpuNodes.filter((n) => n.smArch === "sm_90").map((n) => n.name);

function gpuJob(name: string, nodeSelector: Record<string, string>): V1Job {
  return {
    apiVersion: "batch/v1",
    kind: "Job",
    metadata: { name, namespace },
    spec: {
      backoffLimit: 0,
      template: {
        spec: {
          restartPolicy: "Never",
          nodeSelector,
          containers: [
            {
              name: "build",
              image: "kiln.dev/builder:test",
              command: ["true"],
              resources: { limits: { [gpuResource]: "1" } },
            },
          ],
        },
      },
    },
  };
}

describe("a GPU Job on the simulated nodes", () => {
  const kc = testKubeConfig();
  const core = kc.makeApiClient(CoreV1Api);
  const batch = kc.makeApiClient(BatchV1Api);

  beforeAll(async () => {
    await core.createNamespace({ body: { metadata: { name: namespace } } });
  });
  afterAll(async () => {
    await core.deleteNamespace({ name: namespace });
  });

  it("is scheduled onto a node of the requested GPU product and reaches Complete", async () => {
    await batch.createNamespacedJob({
      namespace,
      body: gpuJob("h100-build", { [gpuProductLabel]: "NVIDIA-H100-80GB-HBM3" }),
    });

    const job = await watchUntil<V1Job>(
      kc,
      `/apis/batch/v1/namespaces/${namespace}/jobs`,
      { name: "h100-build" },
      (j) =>
        j.status?.conditions?.some((c) => ["Complete", "Failed"].includes(c.type) && c.status === "True") ??
        false,
      { timeoutMs: 90_000, describe: "Job h100-build finished" },
    );
    expect(job.status?.conditions?.find((c) => c.status === "True" && c.type === "Complete")).toBeDefined();
    expect(job.status?.succeeded).toBe(1);

    const pods = await core.listNamespacedPod({ namespace, labelSelector: "job-name=h100-build" });
    expect(pods.items).toHaveLength(1);
    const pod = pods.items[0] as V1Pod;
    expect(h100Nodes).toContain(pod.spec?.nodeName);
    expect(pod.status?.phase).toBe("Succeeded");
  });

  it("stays unschedulable when no node has the requested SM arch", async () => {
    await batch.createNamespacedJob({ namespace, body: gpuJob("sm100-build", { [smArchLabel]: "sm_100" }) });

    // The Job controller creates the pod asynchronously, so watch by the Job's label, not a pod name.
    const pod = await watchUntil<V1Pod>(
      kc,
      `/api/v1/namespaces/${namespace}/pods`,
      { labelSelector: "job-name=sm100-build" },
      (p) => p.status?.conditions?.some((c) => c.type === "PodScheduled" && c.status === "False") ?? false,
      { timeoutMs: 60_000, describe: "pod of Job sm100-build marked unschedulable" },
    );
    const scheduled = pod.status?.conditions?.find((c) => c.type === "PodScheduled");
    expect(scheduled?.reason).toBe("Unschedulable");
    expect(scheduled?.message).toMatch(/didn't match Pod's node affinity\/selector/);
    expect(pod.spec?.nodeName).toBeUndefined();
  });
});
