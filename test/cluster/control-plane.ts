import { mkdir } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { binaryPath } from "./binaries.js";
import type { ClusterPki } from "./pki.js";
import { type StartedProcess, startProcess } from "./processes.js";

// Command lines of the control-plane components. Everything listens on 127.0.0.1 only.

/** Service ClusterIPs are allocated from here; nothing routes to it (there is no kube-proxy). */
export const serviceClusterIpRange = "10.96.0.0/16";
/** kwok writes fake pod IPs from here into pod status; nothing routes to it either. */
export const fakePodCidr = "10.244.0.0/16";
/** Nodes with this annotation are driven by kwok; any other node is left alone for other harnesses. */
export const kwokNodeAnnotation = { key: "kwok.x-k8s.io/node", value: "fake" } as const;

const kwokStagesFile = join(dirname(fileURLToPath(import.meta.url)), "kwok-stages.yaml");

export interface Ports {
  etcdClient: number;
  etcdPeer: number;
  apiserver: number;
  controllerManager: number;
  scheduler: number;
  kwok: number;
  s3: number;
}

interface Common {
  runDir: string;
  logDir: string;
  ports: Ports;
  pki: ClusterPki;
}

export async function startEtcd({ runDir, logDir, ports }: Common): Promise<StartedProcess> {
  const dataDir = join(runDir, "etcd");
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  const client = `http://127.0.0.1:${ports.etcdClient}`;
  const peer = `http://127.0.0.1:${ports.etcdPeer}`;
  return startProcess(
    "etcd",
    binaryPath("etcd"),
    [
      "--name=kiln",
      `--data-dir=${dataDir}`,
      `--listen-client-urls=${client}`,
      `--advertise-client-urls=${client}`,
      `--listen-peer-urls=${peer}`,
      `--initial-advertise-peer-urls=${peer}`,
      `--initial-cluster=kiln=${peer}`,
      // Test data is thrown away after the run: durability is not worth an fsync per write.
      "--unsafe-no-fsync=true",
      "--log-level=warn",
    ],
    { logDir },
  );
}

export function startApiserver({ logDir, ports, pki }: Common): StartedProcess {
  return startProcess(
    "kube-apiserver",
    binaryPath("kube-apiserver"),
    [
      `--etcd-servers=http://127.0.0.1:${ports.etcdClient}`,
      "--bind-address=127.0.0.1",
      "--advertise-address=127.0.0.1",
      `--secure-port=${ports.apiserver}`,
      `--tls-cert-file=${pki.apiserver.cert}`,
      `--tls-private-key-file=${pki.apiserver.key}`,
      `--client-ca-file=${pki.ca.cert}`,
      "--authorization-mode=Node,RBAC",
      // The aggregation layer: without it the controller manager and scheduler, which delegate
      // authentication to the apiserver, log a missing requestheader CA bundle on every request.
      `--requestheader-client-ca-file=${pki.frontProxyCa.cert}`,
      "--requestheader-allowed-names=front-proxy-client",
      "--requestheader-username-headers=X-Remote-User",
      "--requestheader-group-headers=X-Remote-Group",
      "--requestheader-extra-headers-prefix=X-Remote-Extra-",
      `--proxy-client-cert-file=${pki.frontProxyClient.cert}`,
      `--proxy-client-key-file=${pki.frontProxyClient.key}`,
      "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
      `--service-account-key-file=${pki.serviceAccount.publicKey}`,
      `--service-account-signing-key-file=${pki.serviceAccount.privateKey}`,
      `--service-cluster-ip-range=${serviceClusterIpRange}`,
      // The "kubernetes" Service would get 127.0.0.1 as its endpoint, which endpoint validation
      // rejects; nothing in this cluster reaches the apiserver through that Service anyway.
      "--endpoint-reconciler-type=none",
      "--allow-privileged=true",
      "--profiling=false",
    ],
    { logDir },
  );
}

export function startControllerManager(
  { logDir, ports, pki }: Common,
  kubeconfig: string,
  extraArgs: readonly string[] = [],
): StartedProcess {
  return startProcess(
    "kube-controller-manager",
    binaryPath("kube-controller-manager"),
    [
      `--kubeconfig=${kubeconfig}`,
      `--authentication-kubeconfig=${kubeconfig}`,
      `--authorization-kubeconfig=${kubeconfig}`,
      "--bind-address=127.0.0.1",
      `--secure-port=${ports.controllerManager}`,
      `--tls-cert-file=${pki.loopbackServing.cert}`,
      `--tls-private-key-file=${pki.loopbackServing.key}`,
      // Signs legacy SA tokens and publishes kube-root-ca.crt into every namespace.
      `--service-account-private-key-file=${pki.serviceAccount.privateKey}`,
      `--root-ca-file=${pki.ca.cert}`,
      // Each controller acts as its own service account, so RBAC is exercised as in a real cluster.
      "--use-service-account-credentials=true",
      `--cluster-signing-cert-file=${pki.ca.cert}`,
      `--cluster-signing-key-file=${pki.ca.key}`,
      `--service-cluster-ip-range=${serviceClusterIpRange}`,
      // One instance per cluster: skipping the leader election lease saves seconds at start.
      "--leader-elect=false",
      // Claims made right after start (the stack's model claim) were bound only by the binder's
      // periodic sync, 15 s by default: the demo waited 14-33 s on it. Bound within ~1 s this way.
      "--pvclaimbinder-sync-period=1s",
      "--profiling=false",
      ...extraArgs,
    ],
    { logDir },
  );
}

export function startScheduler({ logDir, ports, pki }: Common, kubeconfig: string): StartedProcess {
  return startProcess(
    "kube-scheduler",
    binaryPath("kube-scheduler"),
    [
      `--kubeconfig=${kubeconfig}`,
      `--authentication-kubeconfig=${kubeconfig}`,
      `--authorization-kubeconfig=${kubeconfig}`,
      "--bind-address=127.0.0.1",
      `--secure-port=${ports.scheduler}`,
      `--tls-cert-file=${pki.loopbackServing.cert}`,
      `--tls-private-key-file=${pki.loopbackServing.key}`,
      "--leader-elect=false",
      "--profiling=false",
    ],
    { logDir },
  );
}

export function startKwok({ logDir, ports }: Common, kubeconfig: string): StartedProcess {
  return startProcess(
    "kwok",
    binaryPath("kwok"),
    [
      `--kubeconfig=${kubeconfig}`,
      `--config=${kwokStagesFile}`,
      "--manage-all-nodes=false",
      `--manage-nodes-with-annotation-selector=${kwokNodeAnnotation.key}=${kwokNodeAnnotation.value}`,
      `--server-address=127.0.0.1:${ports.kwok}`,
      `--cidr=${fakePodCidr}`,
      // Node leases keep the node lifecycle controller from marking fake nodes unreachable.
      "--node-lease-duration-seconds=40",
    ],
    { logDir },
  );
}
