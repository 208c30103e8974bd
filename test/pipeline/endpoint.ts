import type { KubeClient } from "../../operator/src/controller/kube.js";
import { PORTS_ANNOTATION } from "../pod-runner/runner.js";

interface EndpointSlice {
  ports?: { name?: string; port?: number }[];
  endpoints?: { addresses: string[]; conditions?: { ready?: boolean }; targetRef?: { name: string } }[];
}

/**
 * A loopback URL for a ready endpoint of a Service, found the way kube-proxy would: the Service's
 * EndpointSlices (only pods the readiness probe passed), then the pod runner's port mapping of that
 * pod (see test/pod-runner/README.md). Undefined while no endpoint is ready.
 */
export async function serviceUrl(client: KubeClient, namespace: string, service: string, portName = "http") {
  const slices = await client.request<{ items: EndpointSlice[] }>(
    "GET",
    `/apis/discovery.k8s.io/v1/namespaces/${namespace}/endpointslices?labelSelector=${encodeURIComponent(`kubernetes.io/service-name=${service}`)}`,
  );
  for (const slice of slices.items) {
    const port = slice.ports?.find((p) => p.name === portName)?.port;
    for (const ep of slice.endpoints ?? []) {
      if (!ep.conditions?.ready || !ep.targetRef || port === undefined) continue;
      const pod = await client.request<{ metadata: { annotations?: Record<string, string> } }>(
        "GET",
        `/api/v1/namespaces/${namespace}/pods/${ep.targetRef.name}`,
      );
      const mapping = JSON.parse(pod.metadata.annotations?.[PORTS_ANNOTATION] ?? "{}") as Record<
        string,
        number
      >;
      const local = mapping[String(port)];
      // The endpoint's address is the pod's unroutable fake IP; the process listens on loopback.
      if (local) return `http://127.0.0.1:${local}`;
    }
  }
  return undefined;
}
