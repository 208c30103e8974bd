import { describe, expect, it } from "vitest";
import { ApiError, type KubeObject, type ResourceType } from "../src/controller/kube.js";
import { LeaderElector, type Lease, type LeaseApi, microTime } from "../src/controller/lease.js";
import { FakeClock, flush, silentLog } from "./fakes.js";

/** One Lease object with resourceVersion checks, as the API server keeps it. */
class FakeLeaseApi implements LeaseApi {
  lease: Lease | undefined;
  private rv = 0;
  failing = false;

  async get<T extends KubeObject>(_rt: ResourceType, _ns: string | undefined, _name: string) {
    if (this.failing) throw new ApiError(503, "ServiceUnavailable", "down");
    return structuredClone(this.lease) as T | undefined;
  }

  async create<T extends KubeObject>(_rt: ResourceType, obj: T) {
    if (this.lease) throw new ApiError(409, "AlreadyExists", "exists");
    this.lease = { ...(structuredClone(obj) as unknown as Lease) };
    this.lease.metadata.resourceVersion = String(++this.rv);
    return obj;
  }

  async replace<T extends KubeObject>(_rt: ResourceType, obj: T) {
    if (this.failing) throw new ApiError(503, "ServiceUnavailable", "down");
    const next = structuredClone(obj) as unknown as Lease;
    if (next.metadata.resourceVersion !== this.lease?.metadata.resourceVersion) {
      throw new ApiError(409, "Conflict", "stale resourceVersion");
    }
    next.metadata.resourceVersion = String(++this.rv);
    this.lease = next;
    return obj;
  }
}

const elector = (api: LeaseApi, clock: FakeClock, identity: string) =>
  new LeaderElector(api, {
    namespace: "kiln-system",
    name: "kiln-operator",
    identity,
    leaseDurationMs: 15_000,
    renewDeadlineMs: 10_000,
    retryPeriodMs: 2_000,
    clock,
    log: silentLog,
  });

describe("LeaderElector", () => {
  it("creates the Lease when none exists and holds it", async () => {
    const api = new FakeLeaseApi();
    const a = elector(api, new FakeClock(), "a");
    expect(await a.tryAcquireOrRenew()).toBe(true);
    expect(api.lease?.spec.holderIdentity).toBe("a");
    expect(api.lease?.spec.renewTime).toMatch(/\.\d{6}Z$/);
  });

  it("does not take a lease another holder keeps renewing", async () => {
    const api = new FakeLeaseApi();
    const clock = new FakeClock();
    const a = elector(api, clock, "a");
    const b = elector(api, clock, "b");
    await a.tryAcquireOrRenew();
    for (let i = 0; i < 20; i++) {
      await clock.advance(2_000);
      expect(await a.tryAcquireOrRenew()).toBe(true);
      expect(await b.tryAcquireOrRenew()).toBe(false);
    }
  });

  it("takes over once the holder stopped renewing for the lease duration, counting the transition", async () => {
    const api = new FakeLeaseApi();
    const clock = new FakeClock();
    const a = elector(api, clock, "a");
    const b = elector(api, clock, "b");
    await a.tryAcquireOrRenew();
    expect(await b.tryAcquireOrRenew()).toBe(false);
    await clock.advance(14_999);
    expect(await b.tryAcquireOrRenew()).toBe(false);
    await clock.advance(1);
    expect(await b.tryAcquireOrRenew()).toBe(true);
    expect(api.lease?.spec).toMatchObject({ holderIdentity: "b", leaseTransitions: 1 });
  });

  it("lets exactly one of two racing candidates win a free lease", async () => {
    const api = new FakeLeaseApi();
    const clock = new FakeClock();
    api.lease = {
      apiVersion: "coordination.k8s.io/v1",
      kind: "Lease",
      metadata: { name: "kiln-operator", namespace: "kiln-system", resourceVersion: "0" },
      spec: { holderIdentity: "", leaseDurationSeconds: 15, renewTime: microTime(clock.now()) },
    };
    const results = await Promise.all(
      [elector(api, clock, "a"), elector(api, clock, "b")].map((e) => e.tryAcquireOrRenew()),
    );
    expect(results.filter(Boolean)).toHaveLength(1);
  });

  it("reports leadership lost when renewals fail past the renew deadline", async () => {
    const api = new FakeLeaseApi();
    const clock = new FakeClock();
    const a = elector(api, clock, "a");
    const seen: string[] = [];
    a.run({ onStarted: () => seen.push("started"), onStopped: () => seen.push("stopped") });
    await flush();
    expect(seen).toEqual(["started"]);
    api.failing = true;
    await clock.advance(10_000);
    expect(seen).toEqual(["started"]);
    await clock.advance(2_000);
    expect(seen).toEqual(["started", "stopped"]);
    expect(a.isLeader()).toBe(false);
  });

  it("gives the lease up on release so a successor need not wait", async () => {
    const api = new FakeLeaseApi();
    const clock = new FakeClock();
    const a = elector(api, clock, "a");
    a.run({ onStarted: () => {}, onStopped: () => {} });
    await flush();
    await a.release();
    expect(api.lease?.spec.holderIdentity).toBe("");
    expect(await elector(api, clock, "b").tryAcquireOrRenew()).toBe(true);
  });
});
