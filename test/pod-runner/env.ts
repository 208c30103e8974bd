import type { V1Container, V1EnvVar, V1Pod } from "@kubernetes/client-node";

// Container environment resolved the way the kubelet does it: envFrom first (in order, later sources
// win), then env (in order, may reference earlier variables as $(NAME)), Secrets base64-decoded.

/** Reads one object's data; undefined when it does not exist. */
export type DataSource = (
  kind: "Secret" | "ConfigMap",
  namespace: string,
  name: string,
) => Promise<Record<string, string> | undefined>;

export interface PodIps {
  podIP: string;
  hostIP: string;
}

/** A missing Secret/ConfigMap or key: the kubelet reports CreateContainerConfigError and retries. */
export class ContainerConfigError extends Error {
  override readonly name = "ContainerConfigError";
}

/** Expands $(NAME) from `vars`; $$(NAME) is an escaped literal and unknown names stay as written. */
export function expandReferences(value: string, vars: Record<string, string>): string {
  return value.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)/g, (match, name?: string) => {
    if (match === "$$") return "$";
    return name !== undefined && name in vars ? (vars[name] ?? "") : match;
  });
}

function fieldValue(pod: V1Pod, path: string, ips: PodIps): string {
  const m = /^metadata\.(labels|annotations)\['(.+)'\]$/.exec(path);
  if (m) return (m[1] === "labels" ? pod.metadata?.labels : pod.metadata?.annotations)?.[m[2] ?? ""] ?? "";
  const fields: Record<string, string | undefined> = {
    "metadata.name": pod.metadata?.name,
    "metadata.namespace": pod.metadata?.namespace,
    "metadata.uid": pod.metadata?.uid,
    "spec.nodeName": pod.spec?.nodeName,
    "spec.serviceAccountName": pod.spec?.serviceAccountName,
    "status.podIP": ips.podIP,
    "status.hostIP": ips.hostIP,
  };
  if (!(path in fields)) throw new ContainerConfigError(`unsupported fieldRef ${path}`);
  return fields[path] ?? "";
}

async function envValue(
  v: V1EnvVar,
  pod: V1Pod,
  read: DataSource,
  vars: Record<string, string>,
  ips: PodIps,
): Promise<string | undefined> {
  const ns = pod.metadata?.namespace ?? "default";
  const from = v.valueFrom;
  if (!from) return expandReferences(v.value ?? "", vars);
  const ref = from.secretKeyRef ?? from.configMapKeyRef;
  if (ref) {
    const kind = from.secretKeyRef ? "Secret" : "ConfigMap";
    const data = await read(kind, ns, ref.name ?? "");
    const value = data?.[ref.key];
    if (value === undefined) {
      if (ref.optional) return undefined;
      throw new ContainerConfigError(
        data
          ? `${kind} ${ns}/${ref.name} has no key ${ref.key} (env ${v.name})`
          : `${kind} ${ns}/${ref.name} not found (env ${v.name})`,
      );
    }
    return value;
  }
  if (from.fieldRef) return fieldValue(pod, from.fieldRef.fieldPath, ips);
  throw new ContainerConfigError(`env ${v.name}: resourceFieldRef is not supported by the pod runner`);
}

/** The container's environment from the pod spec alone (no image or runner variables). */
export async function resolveContainerEnv(
  pod: V1Pod,
  container: V1Container,
  read: DataSource,
  ips: PodIps,
): Promise<Record<string, string>> {
  const ns = pod.metadata?.namespace ?? "default";
  const vars: Record<string, string> = {};
  for (const source of container.envFrom ?? []) {
    const ref = source.secretRef ?? source.configMapRef;
    const kind = source.secretRef ? "Secret" : "ConfigMap";
    const data = await read(kind, ns, ref?.name ?? "");
    if (!data) {
      if (ref?.optional) continue;
      throw new ContainerConfigError(`${kind} ${ns}/${ref?.name} not found (envFrom)`);
    }
    for (const [key, value] of Object.entries(data)) vars[`${source.prefix ?? ""}${key}`] = value;
  }
  for (const v of container.env ?? []) {
    const value = await envValue(v, pod, read, vars, ips);
    if (value !== undefined) vars[v.name] = value;
  }
  return vars;
}
