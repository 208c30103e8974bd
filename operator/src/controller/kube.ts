import http from "node:http";
import https from "node:https";
import { type KubeConfig, Watch } from "@kubernetes/client-node";

/** How to reach one kind over REST. */
export interface ResourceType {
  apiVersion: string;
  kind: string;
  plural: string;
  namespaced: boolean;
}

export interface ObjectMetaLike {
  name?: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  ownerReferences?: OwnerReference[];
  creationTimestamp?: string | Date;
  deletionTimestamp?: string | Date;
}

export interface OwnerReference {
  apiVersion: string;
  kind: string;
  name: string;
  uid: string;
  controller?: boolean;
  blockOwnerDeletion?: boolean;
}

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata?: ObjectMetaLike;
}

export interface ObjectList<T> {
  items: T[];
  resourceVersion: string;
}

export type WatchEventType = "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" | "ERROR";
export interface WatchEvent<T> {
  type: WatchEventType;
  object: T;
}

/** The list + watch pair an informer needs; the real one talks to the API server, tests fake it. */
export interface ListWatch<T> {
  list(): Promise<ObjectList<T>>;
  /** Start a watch from `resourceVersion`; `onClose` is called once, with the error if any. */
  watch(
    resourceVersion: string,
    onEvent: (event: WatchEvent<T>) => void,
    onClose: (err?: unknown) => void,
  ): Promise<() => void>;
}

/** An API server error, with the verb and path it answered. */
export class ApiError extends Error {
  constructor(
    readonly code: number,
    readonly reason: string,
    message: string,
    /** `details.causes[].type` of the API server's Status, e.g. NamespaceTerminating. */
    readonly causes: string[] = [],
  ) {
    super(message);
    this.name = "ApiError";
  }
}

export const isNotFound = (err: unknown) => err instanceof ApiError && err.code === 404;
export const isConflict = (err: unknown) => err instanceof ApiError && err.code === 409;
/** A write into a namespace that is being deleted: its objects are going away with it. */
export const isNamespaceTerminating = (err: unknown) =>
  err instanceof ApiError && err.causes.includes("NamespaceTerminating");
export const isAlreadyExists = (err: unknown) => err instanceof ApiError && err.reason === "AlreadyExists";
export const isGone = (err: unknown) =>
  (err instanceof ApiError && err.code === 410) ||
  (typeof err === "object" && err !== null && (err as { statusCode?: number }).statusCode === 410);

export function resourcePath(
  rt: ResourceType,
  namespace?: string,
  name?: string,
  subresource?: string,
): string {
  const base = rt.apiVersion.includes("/") ? `/apis/${rt.apiVersion}` : `/api/${rt.apiVersion}`;
  const ns = rt.namespaced && namespace ? `/namespaces/${encodeURIComponent(namespace)}` : "";
  const n = name ? `/${encodeURIComponent(name)}` : "";
  const sub = subresource ? `/${subresource}` : "";
  return `${base}${ns}/${rt.plural}${n}${sub}`;
}

export const FIELD_MANAGER = "kiln-operator";

/**
 * A small REST client over the KubeConfig's credentials. Plain JSON in and out (no model classes),
 * so what the informer caches and what a write returns have the same shape.
 */
export class KubeClient {
  private agent: http.Agent | undefined;

  constructor(private readonly kc: KubeConfig) {}

  /**
   * client-node's applyToHTTPSOptions builds a new Agent on every call, so each request would open
   * its own TCP and TLS connection: a handshake on both ends per request (CPU the apiserver shares
   * with everything else) and a native TLS context per connection, memory outside the V8 heap: at
   * 500 models the operator's peak RSS was 342 MB with a 158 MB heap, and 186 MB once reused
   * (bench/RESULTS.md). One keep-alive agent with the same TLS options, made from the first
   * request's, is reused; credentials stay per request (headers).
   */
  private reuse(fresh: http.Agent | undefined, transport: typeof http | typeof https): http.Agent {
    const plain = fresh?.constructor === https.Agent || fresh?.constructor === http.Agent;
    // A proxy agent (the cluster's proxy-url) is kept as client-node made it, but made only once.
    this.agent ??=
      plain || !fresh
        ? new transport.Agent({
            ...(fresh as https.Agent | undefined)?.options,
            keepAlive: true,
            // A burst (Events are fire-and-forget) may open many sockets; only a few stay pooled.
            maxFreeSockets: 16,
          })
        : fresh;
    return this.agent;
  }

  async request<T>(
    method: string,
    path: string,
    body?: unknown,
    contentType = "application/json",
  ): Promise<T> {
    const cluster = this.kc.getCurrentCluster();
    if (!cluster) throw new Error("kubeconfig has no current cluster");
    const url = new URL(cluster.server + path);
    const opts: https.RequestOptions = { method, headers: { accept: "application/json" } };
    await this.kc.applyToHTTPSOptions(opts);
    const transport = url.protocol === "https:" ? https : http;
    opts.agent = this.reuse(opts.agent as http.Agent | undefined, transport);
    const payload = body === undefined ? undefined : JSON.stringify(body);
    if (payload !== undefined) {
      opts.headers = {
        ...opts.headers,
        "content-type": contentType,
        "content-length": Buffer.byteLength(payload),
      };
    }
    const { status, text } = await new Promise<{ status: number; text: string }>((resolve, reject) => {
      const req = transport.request(url, opts, (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () =>
          resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString("utf8") }),
        );
        res.on("error", reject);
      });
      req.on("error", reject);
      req.end(payload);
    });
    const parsed = text ? safeJson(text) : undefined;
    if (status >= 400) {
      const s = (parsed ?? {}) as {
        reason?: string;
        message?: string;
        details?: { causes?: { reason?: string; type?: string }[] };
      };
      throw new ApiError(
        status,
        s.reason ?? "",
        `${method} ${path}: ${status} ${s.message ?? text}`,
        (s.details?.causes ?? []).flatMap((c) => [c.type ?? c.reason ?? ""]).filter(Boolean),
      );
    }
    return parsed as T;
  }

  async get<T extends KubeObject>(rt: ResourceType, namespace: string | undefined, name: string) {
    try {
      return await this.request<T>("GET", resourcePath(rt, namespace, name));
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  async list<T extends KubeObject>(
    rt: ResourceType,
    namespace?: string,
    labelSelector?: string,
    fieldSelector?: string,
  ): Promise<ObjectList<T>> {
    const params = new URLSearchParams();
    if (labelSelector) params.set("labelSelector", labelSelector);
    if (fieldSelector) params.set("fieldSelector", fieldSelector);
    const q = params.size ? `?${params}` : "";
    const list = await this.request<{ items: T[]; metadata: { resourceVersion: string } }>(
      "GET",
      resourcePath(rt, namespace) + q,
    );
    // Lists omit apiVersion/kind on items; put them back so every cached object is self-describing.
    const items = list.items.map((i) => ({ ...i, apiVersion: rt.apiVersion, kind: rt.kind }));
    return { items, resourceVersion: list.metadata.resourceVersion };
  }

  create<T extends KubeObject>(rt: ResourceType, obj: T): Promise<T> {
    return this.request<T>(
      "POST",
      `${resourcePath(rt, obj.metadata?.namespace)}?fieldManager=${FIELD_MANAGER}`,
      obj,
    );
  }

  replace<T extends KubeObject>(rt: ResourceType, obj: T): Promise<T> {
    const path = resourcePath(rt, obj.metadata?.namespace, obj.metadata?.name);
    return this.request<T>("PUT", `${path}?fieldManager=${FIELD_MANAGER}`, obj);
  }

  replaceStatus<T extends KubeObject>(rt: ResourceType, obj: T): Promise<T> {
    const path = resourcePath(rt, obj.metadata?.namespace, obj.metadata?.name, "status");
    return this.request<T>("PUT", `${path}?fieldManager=${FIELD_MANAGER}`, obj);
  }

  /** Server-side apply: the API server merges, prunes what we stopped setting, and keeps defaults. */
  apply<T extends KubeObject>(rt: ResourceType, obj: T): Promise<T> {
    const path = resourcePath(rt, obj.metadata?.namespace, obj.metadata?.name);
    return this.request<T>(
      "PATCH",
      `${path}?fieldManager=${FIELD_MANAGER}&force=true`,
      obj,
      "application/apply-patch+yaml",
    );
  }

  async delete(rt: ResourceType, namespace: string | undefined, name: string): Promise<void> {
    try {
      await this.request("DELETE", resourcePath(rt, namespace, name), { propagationPolicy: "Background" });
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
  }

  listWatch<T extends KubeObject>(
    rt: ResourceType,
    namespace?: string,
    labelSelector?: string,
    fieldSelector?: string,
  ): ListWatch<T> {
    return {
      list: () => this.list<T>(rt, namespace, labelSelector, fieldSelector),
      watch: async (resourceVersion, onEvent, onClose) => {
        const controller = await new Watch(this.kc).watch(
          resourcePath(rt, namespace),
          // Bookmarks keep resourceVersion fresh on quiet kinds, so a reconnect rarely hits 410.
          {
            resourceVersion,
            allowWatchBookmarks: true,
            timeoutSeconds: 300,
            ...(labelSelector ? { labelSelector } : {}),
            ...(fieldSelector ? { fieldSelector } : {}),
          },
          (type, object) => onEvent({ type: type as WatchEventType, object }),
          (err) => onClose(err ?? undefined),
        );
        return () => controller.abort();
      },
    };
  }
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

export const objectKey = (obj: KubeObject) =>
  obj.metadata?.namespace ? `${obj.metadata.namespace}/${obj.metadata.name}` : (obj.metadata?.name ?? "");

export function splitKey(key: string): { namespace: string; name: string } {
  const slash = key.indexOf("/");
  return slash < 0
    ? { namespace: "", name: key }
    : { namespace: key.slice(0, slash), name: key.slice(slash + 1) };
}
