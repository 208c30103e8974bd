import { execFile } from "node:child_process";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import type { KubeConfig } from "@kubernetes/client-node";
import { parseAllDocuments, stringify } from "yaml";
import type { KubeClient, KubeObject, ResourceType } from "../../operator/src/controller/kube.js";
import { binaryPath, pinnedVersion } from "../cluster/binaries.js";
import type { S3Endpoint } from "../cluster/launcher.js";
import { repoRoot } from "../pod-runner/images.js";
import { podRunnerLabel } from "../pod-runner/node.js";

// The operator of the pipeline tier and the demo runs with what the Helm chart installs: its
// ServiceAccount, (Cluster)Role(Binding)s and configuration ConfigMap, rendered by the pinned helm
// from charts/kiln. Only the chart's Deployment is left out: the operator runs as a local process,
// authenticated with a token of the chart's ServiceAccount, so any permission the chart forgot fails
// these tiers.

export const RELEASE = "kiln";
export const RELEASE_NAMESPACE = "kiln-system";
/** The chart's names for release `kiln` (its fullname is the release name when it contains "kiln"). */
export const CHART_NAMES = { serviceAccount: "kiln", configMap: "kiln-config" } as const;
/** Secret (in each model namespace) with the S3 credentials that builds and runtimes get by envFrom. */
export const STORE_SECRET = "kiln-store";
export const RUNNER_NODE = "kiln-local-gpu-0";

/** What the operator process needs besides the chart: nothing the chart deploys with its pod. */
const SKIPPED_KINDS = new Set([
  "Deployment",
  "Service",
  "PodDisruptionBudget",
  "ServiceMonitor",
  "CustomResourceDefinition",
]);

export interface ChartSettings {
  s3: S3Endpoint;
  toolchainVersion: string;
  storePrefix: string;
  /** A directory: the store is file://<dir> on a hostPath volume of it instead of the S3 server. */
  fileStore?: string;
}

/** Chart values: images the pod runner maps, the local S3 server (or a file store), CPU pods on the runner's node. */
export function chartValues(s: ChartSettings) {
  return {
    toolchain: {
      version: s.toolchainVersion,
      builderImage: { repository: "kiln/builder" },
      runtimeImage: { repository: "kiln/runtime" },
    },
    objectStore: s.fileStore
      ? {
          uri: `file://${s.fileStore}`,
          // The pod runner maps a hostPath onto its own path: the pods' processes find the store
          // where the operator (a local process too) reads it.
          volume: { hostPath: { path: s.fileStore, type: "DirectoryOrCreate" } },
        }
      : {
          uri: `s3://${s.s3.bucket}/${s.storePrefix}`,
          endpoint: s.s3.endpoint,
          region: s.s3.region,
          credentialsSecret: STORE_SECRET,
        },
    // CPU engines have no GPU label to select; they go to the runner's node, the only one that runs them.
    defaults: { gpuNodeSelectors: { cpu: { [podRunnerLabel]: RUNNER_NODE } } },
    limits: { buildRetryBaseSeconds: 2 },
  };
}

const run = promisify(execFile);

/** `helm template` of charts/kiln with these settings, as objects. */
export async function renderChart(s: ChartSettings, workDir: string): Promise<KubeObject[]> {
  const valuesFile = join(workDir, "values.yaml");
  await writeFile(valuesFile, stringify(chartValues(s)));
  const { stdout } = await run(binaryPath("helm"), [
    "template",
    RELEASE,
    join(repoRoot, "charts/kiln"),
    "--namespace",
    RELEASE_NAMESPACE,
    "-f",
    valuesFile,
    // helm template assumes an old Kubernetes without a cluster to ask; the chart needs a new one.
    "--kube-version",
    pinnedVersion("kube-apiserver"),
  ]).catch((err: Error & { stderr?: string }) => {
    throw new Error(`helm template charts/kiln: ${err.stderr ?? err.message}`);
  });
  return parseAllDocuments(stdout)
    .map((d) => d.toJSON() as KubeObject | null)
    .filter((o): o is KubeObject => o !== null && !SKIPPED_KINDS.has(o.kind ?? ""));
}

const resourceOf = (o: KubeObject): ResourceType => {
  const plural = `${(o.kind ?? "").toLowerCase()}s`.replace(/ys$/, "ies");
  const namespaced = !["ClusterRole", "ClusterRoleBinding"].includes(o.kind ?? "");
  return { apiVersion: o.apiVersion ?? "v1", kind: o.kind ?? "", plural, namespaced };
};

/** Server-side applies the rendered objects (what `helm upgrade` would change). */
export async function applyChart(client: KubeClient, objects: KubeObject[]): Promise<void> {
  for (const o of objects) {
    const namespaced = resourceOf(o).namespaced;
    const obj = namespaced
      ? { ...o, metadata: { ...o.metadata, namespace: o.metadata?.namespace ?? RELEASE_NAMESPACE } }
      : o;
    await client.apply(resourceOf(o), obj);
  }
}

/**
 * A kubeconfig file for the chart's ServiceAccount: the admin kubeconfig's cluster and CA, and a
 * token from the TokenRequest API (what the kubelet would project into the operator's pod).
 */
export async function serviceAccountKubeconfig(
  client: KubeClient,
  admin: KubeConfig,
  file: string,
): Promise<void> {
  const res = await client.request<{ status: { token: string } }>(
    "POST",
    `/api/v1/namespaces/${RELEASE_NAMESPACE}/serviceaccounts/${CHART_NAMES.serviceAccount}/token`,
    { apiVersion: "authentication.k8s.io/v1", kind: "TokenRequest", spec: { expirationSeconds: 86_400 } },
  );
  const cluster = admin.getCurrentCluster();
  if (!cluster) throw new Error("the admin kubeconfig has no current cluster");
  // The launcher's kubeconfigs embed the CA.
  const ca = cluster.caData;
  if (!ca) throw new Error("the admin kubeconfig has no embedded certificate-authority-data");
  const kubeconfig = {
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: "local", cluster: { server: cluster.server, "certificate-authority-data": ca } }],
    users: [{ name: CHART_NAMES.serviceAccount, user: { token: res.status.token } }],
    contexts: [{ name: "operator", context: { cluster: "local", user: CHART_NAMES.serviceAccount } }],
    "current-context": "operator",
  };
  await writeFile(file, stringify(kubeconfig), { mode: 0o600 });
}
