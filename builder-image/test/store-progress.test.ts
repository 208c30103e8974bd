import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { enginePaths, parseProgressReport } from "../../lib/manifest.js";
import { type ObjectStore, openObjectStore } from "../../lib/object-store.js";
import { storeProgress } from "../src/store-progress.js";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "kiln-progress-"));
});
afterAll(async () => rm(dir, { recursive: true, force: true }));

/** The store, counting the progress writes that reach it. */
function countingStore(): { store: ObjectStore; writes: string[] } {
  const inner = openObjectStore({ uri: pathToFileURL(dir).href });
  const writes: string[] = [];
  return {
    writes,
    store: {
      ...inner,
      uri: (p) => inner.uri(p),
      get: (p) => inner.get(p),
      put: async (p, body) => {
        writes.push(String(body));
        await inner.put(p, body);
      },
    },
  };
}

describe("progress.json for the operator", () => {
  test("is written on every phase change and at most every interval within a phase; the last event lands", async () => {
    const { store, writes } = countingStore();
    let t = 0;
    const p = storeProgress(store, "k1", { minIntervalMs: 3000, now: () => t });
    p.sink({ phase: "fetch", percent: 1, message: "a" });
    for (let i = 2; i < 20; i++) p.sink({ phase: "fetch", percent: i, message: "bytes" });
    t = 3000;
    p.sink({ phase: "fetch", percent: 20, message: "fetched" });
    p.sink({ phase: "compile", percent: 22, message: "start" });
    await p.flush();
    // fetch@1 goes out at once; the 18 byte-level events within the interval cost nothing; fetch@20
    // (interval passed) is overtaken by compile@22 while the first write is in flight.
    expect(writes.map((w) => JSON.parse(w).percent)).toEqual([1, 22]);
    const stored = parseProgressReport(
      (await readFile(join(dir, enginePaths("k1").progress), "utf8")).toString(),
    );
    expect(stored).toMatchObject({ phase: "compile", percent: 22, message: "start" });
    expect(stored?.updatedAt).toBe(new Date(3000).toISOString());
  });

  test("on flush, the newest event the interval held back is written: where a failed build stopped", async () => {
    const { store, writes } = countingStore();
    let t = 0;
    const p = storeProgress(store, "k3", { minIntervalMs: 3000, now: () => t });
    p.sink({ phase: "fetch", percent: 0, message: "fetching" });
    t = 100;
    p.sink({ phase: "fetch", percent: 20, message: "4 model files" });
    await p.flush();
    expect(writes.map((w) => JSON.parse(w).percent)).toEqual([0, 20]);
    await p.flush();
    expect(writes).toHaveLength(2);
  });

  test("a failed write is reported and never fails the build", async () => {
    const errors: Error[] = [];
    const broken = { ...countingStore().store, put: () => Promise.reject(new Error("store down")) };
    const p = storeProgress(broken, "k2", { onError: (e) => errors.push(e) });
    p.sink({ phase: "fetch", percent: 0, message: "start" });
    await expect(p.flush()).resolves.toBeUndefined();
    expect(errors.map((e) => e.message)).toEqual(["store down"]);
  });
});
