import { describe, expect, it } from "vitest";
import { Informer } from "../src/controller/informer.js";
import type { KubeObject, ListWatch, ObjectList, WatchEvent } from "../src/controller/kube.js";
import { FakeClock, flush, silentLog } from "./fakes.js";

const obj = (name: string, rv: string): KubeObject => ({
  apiVersion: "v1",
  kind: "ConfigMap",
  metadata: { name, namespace: "ns", resourceVersion: rv },
});

/** A scripted API: tests set what a list returns and push watch events. */
class FakeListWatch implements ListWatch<KubeObject> {
  listResult: ObjectList<KubeObject> = { items: [], resourceVersion: "1" };
  lists = 0;
  watches: string[] = [];
  private emit: ((e: WatchEvent<KubeObject>) => void) | undefined;
  private close: ((err?: unknown) => void) | undefined;

  async list() {
    this.lists++;
    return structuredClone(this.listResult);
  }

  async watch(rv: string, onEvent: (e: WatchEvent<KubeObject>) => void, onClose: (err?: unknown) => void) {
    this.watches.push(rv);
    this.emit = onEvent;
    this.close = onClose;
    return () => {};
  }

  send(e: WatchEvent<KubeObject>) {
    this.emit?.(e);
  }

  end(err?: unknown) {
    this.close?.(err);
  }
}

function recording(informer: Informer<KubeObject>) {
  const log: string[] = [];
  informer.on({
    add: (o) => log.push(`add ${o.metadata?.name}`),
    update: (_, o) => log.push(`update ${o.metadata?.name}`),
    delete: (o) => log.push(`delete ${o.metadata?.name}`),
  });
  return log;
}

describe("Informer", () => {
  it("lists, then watches from the list's resourceVersion and keeps the cache current", async () => {
    const lw = new FakeListWatch();
    lw.listResult = { items: [obj("a", "5")], resourceVersion: "7" };
    const informer = new Informer(lw, { log: silentLog });
    const log = recording(informer);
    await informer.start();
    expect(lw.watches).toEqual(["7"]);
    lw.send({ type: "ADDED", object: obj("b", "8") });
    lw.send({ type: "MODIFIED", object: obj("a", "9") });
    lw.send({ type: "DELETED", object: obj("b", "10") });
    expect(log).toEqual(["add a", "add b", "update a", "delete b"]);
    expect(informer.list().map((o) => o.metadata?.name)).toEqual(["a"]);
    expect(informer.get("ns/a")?.metadata?.resourceVersion).toBe("9");
  });

  it("resumes a watch the server closed from the last resourceVersion seen, bookmarks included", async () => {
    const lw = new FakeListWatch();
    const informer = new Informer(lw, { log: silentLog });
    await informer.start();
    lw.send({ type: "ADDED", object: obj("a", "3") });
    lw.send({ type: "BOOKMARK", object: { metadata: { resourceVersion: "42" } } });
    lw.end();
    await flush();
    expect(lw.watches).toEqual(["1", "42"]);
    expect(lw.lists).toBe(1);
  });

  it("re-lists on 410 Gone and emits deletes for objects that vanished meanwhile", async () => {
    const lw = new FakeListWatch();
    lw.listResult = { items: [obj("a", "2"), obj("b", "3")], resourceVersion: "3" };
    const informer = new Informer(lw, { log: silentLog });
    const log = recording(informer);
    await informer.start();
    lw.listResult = { items: [obj("a", "20"), obj("c", "21")], resourceVersion: "21" };
    lw.send({
      type: "ERROR",
      object: { kind: "Status", code: 410, message: "too old resource version" } as KubeObject,
    });
    await flush();
    expect(lw.lists).toBe(2);
    expect(lw.watches).toEqual(["3", "21"]);
    expect(log.slice(2)).toEqual(["update a", "add c", "delete b"]);
  });

  it("re-lists when the watch cannot start because the resourceVersion is gone", async () => {
    const lw = new FakeListWatch();
    const informer = new Informer(lw, { log: silentLog });
    await informer.start();
    lw.end(Object.assign(new Error("Gone"), { statusCode: 410 }));
    await flush();
    expect(lw.lists).toBe(2);
  });

  it("backs off before re-listing after other watch errors", async () => {
    const clock = new FakeClock();
    const lw = new FakeListWatch();
    const informer = new Informer(lw, { log: silentLog, clock, retryMs: 1000 });
    await informer.start();
    lw.end(new Error("connection reset"));
    await flush();
    expect(lw.lists).toBe(1);
    await clock.advance(1000);
    expect(lw.lists).toBe(2);
  });

  it("replays the cache as updates on every resync period", async () => {
    const clock = new FakeClock();
    const lw = new FakeListWatch();
    lw.listResult = { items: [obj("a", "1")], resourceVersion: "1" };
    const informer = new Informer(lw, { log: silentLog, clock, resyncMs: 60_000 });
    const log = recording(informer);
    await informer.start();
    await clock.advance(120_000);
    expect(log).toEqual(["add a", "update a", "update a"]);
  });

  it("answers index lookups", async () => {
    const lw = new FakeListWatch();
    const owned = { ...obj("a", "1"), metadata: { ...obj("a", "1").metadata, labels: { app: "x" } } };
    lw.listResult = { items: [owned, obj("b", "1")], resourceVersion: "1" };
    const informer = new Informer(lw, { log: silentLog });
    informer.addIndex("app", (o) => (o.metadata?.labels?.app ? [o.metadata.labels.app] : []));
    await informer.start();
    expect(informer.byIndex("app", "x").map((o) => o.metadata?.name)).toEqual(["a"]);
  });
});
