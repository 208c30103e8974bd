import type { EngineBuild, InferenceModel } from "../../operator/src/api/types.js";
import type { KubeClient } from "../../operator/src/controller/kube.js";
import { resourcePath } from "../../operator/src/controller/kube.js";
import { EB_RESOURCE, IM_RESOURCE } from "../../operator/src/inferencemodel/reconcile.js";

// Reads the pipeline tier and the demo share: the model, its builds, its Deployments and pods.

export const getModel = (client: KubeClient, ns: string, name: string) =>
  client.get<InferenceModel>(IM_RESOURCE, ns, name);

export async function listBuilds(client: KubeClient, ns: string): Promise<EngineBuild[]> {
  return (await client.list<EngineBuild>(EB_RESOURCE, ns)).items;
}

export interface DeploymentView {
  metadata: { name: string; annotations?: Record<string, string> };
  spec: {
    template: {
      metadata: { annotations?: Record<string, string> };
      spec: { containers: { image: string; env?: { name: string; value?: string }[] }[] };
    };
  };
  status?: { readyReplicas?: number; updatedReplicas?: number; replicas?: number };
}

export async function listDeployments(client: KubeClient, ns: string): Promise<DeploymentView[]> {
  return (
    await client.request<{ items: DeploymentView[] }>("GET", `/apis/apps/v1/namespaces/${ns}/deployments`)
  ).items;
}

export const envOf = (d: DeploymentView, name: string) =>
  d.spec.template.spec.containers[0]?.env?.find((e) => e.name === name)?.value;

/** One line per pod: name, phase, container state; for messages when a wait times out. */
export async function describePods(client: KubeClient, ns: string): Promise<string> {
  const pods = await client.request<{
    items: {
      metadata: { name: string };
      spec: { nodeName?: string };
      status: { phase?: string; containerStatuses?: unknown[] };
    }[];
  }>("GET", resourcePath({ apiVersion: "v1", kind: "Pod", plural: "pods", namespaced: true }, ns));
  return pods.items
    .map(
      (p) =>
        `${p.metadata.name} on ${p.spec.nodeName ?? "-"}: ${p.status.phase} ${JSON.stringify(p.status.containerStatuses?.[0] ?? {})}`,
    )
    .join("\n");
}
