import type { Logger } from "pino";
import type { Clock } from "./clock.js";
import { isNamespaceTerminating, type KubeClient, type KubeObject, type ResourceType } from "./kube.js";

const EVENT: ResourceType = { apiVersion: "v1", kind: "Event", plural: "events", namespaced: true };

export type EventType = "Normal" | "Warning";

export interface EventSink {
  emit(obj: KubeObject, type: EventType, reason: string, message: string): void;
}

/**
 * Records core/v1 Events (what `kubectl describe` shows). Fire-and-forget: an Event that cannot be
 * written is logged, never a reason to fail a reconcile.
 */
export class EventRecorder implements EventSink {
  private seq = 0;

  constructor(
    private readonly client: Pick<KubeClient, "create">,
    private readonly clock: Clock,
    private readonly log: Logger,
    private readonly component = "kiln-operator",
  ) {}

  emit(obj: KubeObject, type: EventType, reason: string, message: string): void {
    const meta = obj.metadata ?? {};
    const now = new Date(this.clock.now()).toISOString();
    const namespace = meta.namespace ?? "default";
    const name = `${meta.name}.${this.clock.now().toString(16)}${(this.seq++).toString(16)}`;
    this.log.info({ object: `${namespace}/${meta.name}`, kind: obj.kind, reason, type }, message);
    void this.client
      .create(EVENT, {
        apiVersion: "v1",
        kind: "Event",
        metadata: { name, namespace },
        involvedObject: {
          apiVersion: obj.apiVersion,
          kind: obj.kind,
          name: meta.name,
          namespace,
          uid: meta.uid,
          resourceVersion: meta.resourceVersion,
        },
        type,
        reason,
        message,
        count: 1,
        firstTimestamp: now,
        lastTimestamp: now,
        source: { component: this.component },
        reportingComponent: this.component,
      } as KubeObject)
      .catch((err: unknown) =>
        // Events into a namespace being deleted are expected to fail; anything else is worth a warning.
        isNamespaceTerminating(err)
          ? this.log.debug({ reason }, "namespace is being deleted; event dropped")
          : this.log.warn({ err, reason }, "could not record event"),
      );
  }
}
