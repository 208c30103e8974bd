import type { Logger } from "pino";
import { type Clock, realClock } from "./clock.js";
import { isAlreadyExists, isConflict, type KubeClient, type ResourceType } from "./kube.js";

export const LEASE: ResourceType = {
  apiVersion: "coordination.k8s.io/v1",
  kind: "Lease",
  plural: "leases",
  namespaced: true,
};

export interface Lease {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace: string; resourceVersion?: string };
  spec: {
    holderIdentity?: string;
    leaseDurationSeconds?: number;
    acquireTime?: string;
    renewTime?: string;
    leaseTransitions?: number;
  };
}

/** The two calls leader election makes; KubeClient satisfies it, tests fake it. */
export type LeaseApi = Pick<KubeClient, "get" | "create" | "replace">;

export interface LeaderElectionOptions {
  namespace: string;
  name: string;
  identity: string;
  leaseDurationMs?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
  clock?: Clock;
  log: Logger;
}

/** Lease times are metav1.MicroTime: RFC 3339 with exactly six fractional digits. */
export const microTime = (ms: number) => new Date(ms).toISOString().replace(/\.(\d{3})Z$/, ".$1000Z");

/**
 * Leader election on a coordination.k8s.io Lease, as client-go does it: a candidate takes the lease
 * when it is free or its holder has not renewed it for leaseDuration, *measured on the candidate's
 * own clock from when it last saw the record change* (so clock skew between replicas cannot hand
 * the lease to two holders). Writes use resourceVersion, so two candidates cannot both win a race.
 */
export class LeaderElector {
  private readonly clock: Clock;
  private readonly leaseDurationMs: number;
  private readonly renewDeadlineMs: number;
  private readonly retryPeriodMs: number;
  private observed: { record: string; at: number } | undefined;
  private leading = false;
  private stopped = false;
  private timer: unknown;

  constructor(
    private readonly api: LeaseApi,
    private readonly opts: LeaderElectionOptions,
  ) {
    this.clock = opts.clock ?? realClock;
    this.leaseDurationMs = opts.leaseDurationMs ?? 15_000;
    this.renewDeadlineMs = opts.renewDeadlineMs ?? 10_000;
    this.retryPeriodMs = opts.retryPeriodMs ?? 2_000;
  }

  isLeader(): boolean {
    return this.leading;
  }

  /**
   * Campaign until elected, then keep renewing. `onStopped` fires once if leadership is lost (renew
   * failing for longer than renewDeadline); the caller should exit, since its caches and queues
   * may hold work it no longer owns.
   */
  run(callbacks: { onStarted: () => void; onStopped: () => void }): void {
    let lastRenew = 0;
    const tick = async () => {
      if (this.stopped) return;
      const ok = await this.tryAcquireOrRenew().catch((err: unknown) => {
        this.opts.log.warn({ err }, "lease update failed");
        return false;
      });
      if (this.stopped) return;
      const now = this.clock.now();
      if (ok) {
        lastRenew = now;
        if (!this.leading) {
          this.leading = true;
          this.opts.log.info({ lease: this.opts.name, identity: this.opts.identity }, "became leader");
          callbacks.onStarted();
        }
      } else if (this.leading && now - lastRenew > this.renewDeadlineMs) {
        this.leading = false;
        this.stopped = true;
        this.opts.log.error({ lease: this.opts.name }, "lost leadership");
        callbacks.onStopped();
        return;
      }
      this.timer = this.clock.setTimeout(() => void tick(), this.retryPeriodMs);
    };
    void tick();
  }

  /** One round: true when this candidate holds the lease afterwards. */
  async tryAcquireOrRenew(): Promise<boolean> {
    const now = this.clock.now();
    const { namespace, name, identity } = this.opts;
    const durationSeconds = Math.ceil(this.leaseDurationMs / 1000);
    const lease = await this.api.get<Lease>(LEASE, namespace, name);
    if (!lease) {
      try {
        await this.api.create<Lease>(LEASE, {
          apiVersion: LEASE.apiVersion,
          kind: LEASE.kind,
          metadata: { name, namespace },
          spec: {
            holderIdentity: identity,
            leaseDurationSeconds: durationSeconds,
            acquireTime: microTime(now),
            renewTime: microTime(now),
            leaseTransitions: 0,
          },
        });
        this.observed = undefined;
        return true;
      } catch (err) {
        if (isAlreadyExists(err) || isConflict(err)) return false;
        throw err;
      }
    }

    const record = JSON.stringify(lease.spec);
    if (this.observed?.record !== record) this.observed = { record, at: now };
    const holder = lease.spec.holderIdentity ?? "";
    const heldByOther = holder !== "" && holder !== identity;
    const expiry = this.observed.at + (lease.spec.leaseDurationSeconds ?? durationSeconds) * 1000;
    if (heldByOther && now < expiry) return false;

    const transition = holder !== identity;
    const next: Lease = {
      ...lease,
      spec: {
        holderIdentity: identity,
        leaseDurationSeconds: durationSeconds,
        acquireTime: transition ? microTime(now) : lease.spec.acquireTime,
        renewTime: microTime(now),
        leaseTransitions: (lease.spec.leaseTransitions ?? 0) + (transition ? 1 : 0),
      },
    };
    try {
      await this.api.replace<Lease>(LEASE, next);
      return true;
    } catch (err) {
      if (isConflict(err)) return false;
      throw err;
    }
  }

  /** Stop campaigning; a leader gives the lease up so a successor need not wait for it to expire. */
  async release(): Promise<void> {
    this.stopped = true;
    this.clock.clearTimeout(this.timer);
    if (!this.leading) return;
    this.leading = false;
    const lease = await this.api.get<Lease>(LEASE, this.opts.namespace, this.opts.name);
    if (lease?.spec.holderIdentity !== this.opts.identity) return;
    await this.api
      .replace<Lease>(LEASE, {
        ...lease,
        spec: {
          ...lease.spec,
          holderIdentity: "",
          leaseDurationSeconds: 1,
          renewTime: microTime(this.clock.now()),
        },
      })
      .catch((err: unknown) => this.opts.log.warn({ err }, "lease release failed"));
  }
}
