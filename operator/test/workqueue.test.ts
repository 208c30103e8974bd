import { describe, expect, it } from "vitest";
import { runWorkers, WorkQueue } from "../src/controller/workqueue.js";
import { FakeClock, flush, silentLog } from "./fakes.js";

describe("WorkQueue", () => {
  it("queues a key once however often it is added while waiting", async () => {
    const q = new WorkQueue();
    q.add("a");
    q.add("b");
    q.add("a");
    expect(q.len()).toBe(2);
    expect(await q.get()).toBe("a");
    expect(await q.get()).toBe("b");
  });

  it("never hands a key to two workers: an add during processing requeues it after done", async () => {
    const q = new WorkQueue();
    q.add("a");
    const key = await q.get();
    q.add("a");
    expect(q.len()).toBe(0);
    q.done(key as string);
    expect(q.len()).toBe(1);
    expect(await q.get()).toBe("a");
  });

  it("grows the retry delay exponentially per key and caps it", () => {
    const q = new WorkQueue({ baseDelayMs: 100, maxDelayMs: 1000, clock: new FakeClock() });
    const delays = Array.from({ length: 6 }, () => q.addRateLimited("a"));
    expect(delays).toEqual([100, 200, 400, 800, 1000, 1000]);
    expect(q.addRateLimited("b")).toBe(100);
    expect(q.backoff(5000)).toBe(1000);
  });

  it("forgets the backoff of a key once it succeeds", () => {
    const q = new WorkQueue({ baseDelayMs: 100, clock: new FakeClock() });
    q.addRateLimited("a");
    q.addRateLimited("a");
    expect(q.numRequeues("a")).toBe(2);
    q.forget("a");
    expect(q.numRequeues("a")).toBe(0);
    expect(q.addRateLimited("a")).toBe(100);
  });

  it("adds a delayed key when its time comes, the earliest of several delays winning", async () => {
    const clock = new FakeClock();
    const q = new WorkQueue({ clock });
    q.addAfter("a", 5000);
    q.addAfter("a", 1000);
    q.addAfter("a", 3000);
    await clock.advance(999);
    expect(q.len()).toBe(0);
    await clock.advance(1);
    expect(q.len()).toBe(1);
    await clock.advance(10_000);
    expect(q.len()).toBe(1);
  });

  it("wakes a blocked worker on add and releases it with undefined on shutdown", async () => {
    const q = new WorkQueue();
    const first = q.get();
    q.add("x");
    expect(await first).toBe("x");
    const second = q.get();
    q.shutDown();
    expect(await second).toBeUndefined();
    q.add("y");
    expect(q.len()).toBe(0);
  });
});

describe("runWorkers", () => {
  it("runs keys concurrently up to the bound, one at a time per key", async () => {
    const q = new WorkQueue();
    const active = new Set<string>();
    let peak = 0;
    let overlapped = false;
    const seen: string[] = [];
    const release: (() => void)[] = [];
    const done = runWorkers(
      q,
      2,
      async (key) => {
        if (active.has(key)) overlapped = true;
        active.add(key);
        seen.push(key);
        peak = Math.max(peak, active.size);
        await new Promise<void>((r) => release.push(r));
        active.delete(key);
        return undefined;
      },
      silentLog,
    );
    for (const k of ["a", "b", "c", "a"]) q.add(k);
    await flush();
    expect(seen).toEqual(["a", "b"]);
    while (release.length) {
      release.shift()?.();
      await flush();
    }
    // "a" was added again while it ran, so it runs a second time, after the first run finished.
    expect(seen).toEqual(["a", "b", "c", "a"]);
    expect(overlapped).toBe(false);
    expect(peak).toBe(2);
    q.shutDown();
    await done;
  });

  it("retries a failing key with backoff and forgets it after a success", async () => {
    const clock = new FakeClock();
    const q = new WorkQueue({ clock, baseDelayMs: 1000 });
    let calls = 0;
    const done = runWorkers(
      q,
      1,
      async () => {
        calls++;
        if (calls < 3) throw new Error("transient");
        return undefined;
      },
      silentLog,
    );
    q.add("a");
    await flush();
    expect(calls).toBe(1);
    await clock.advance(999);
    expect(calls).toBe(1);
    await clock.advance(1);
    expect(calls).toBe(2);
    await clock.advance(2000);
    expect(calls).toBe(3);
    expect(q.numRequeues("a")).toBe(0);
    q.shutDown();
    await done;
  });

  it("requeues after the delay a successful reconcile asks for", async () => {
    const clock = new FakeClock();
    const q = new WorkQueue({ clock });
    let calls = 0;
    const done = runWorkers(
      q,
      1,
      async () => {
        calls++;
        return calls === 1 ? { requeueAfterMs: 30_000 } : undefined;
      },
      silentLog,
    );
    q.add("a");
    await flush();
    await clock.advance(29_999);
    expect(calls).toBe(1);
    await clock.advance(1);
    expect(calls).toBe(2);
    q.shutDown();
    await done;
  });
});
