import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { openObjectStore, uploadPartBytes } from "./object-store.js";

let work: string;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "kiln-store-test-"));
});
afterAll(async () => rm(work, { recursive: true, force: true }));

describe("file:// object store", () => {
  test("putFile publishes a whole file that size, get and list then see", async () => {
    const store = openObjectStore({ uri: pathToFileURL(join(work, "store-a")).href });
    const local = join(work, "engine-a.bin");
    const bytes = randomBytes(300_000);
    await writeFile(local, bytes);
    let reported = 0;
    await store.putFile("engines/k1/engine.kiln", local, (n) => {
      reported = n;
    });
    await store.put("engines/k1/manifest.json", "{}");
    expect(reported).toBe(bytes.length);
    expect(await store.size("engines/k1/engine.kiln")).toBe(bytes.length);
    expect(await store.size("engines/k1/nothing")).toBeUndefined();
    expect(await store.list("engines/k1")).toEqual([
      { path: "engines/k1/engine.kiln", size: bytes.length },
      { path: "engines/k1/manifest.json", size: 2 },
    ]);
    expect(await store.list("engines/missing")).toEqual([]);
    expect(store.uri("engines/k1/engine.kiln")).toBe(
      pathToFileURL(join(work, "store-a/engines/k1/engine.kiln")).href,
    );
  });

  test("getFile fetches only the missing tail of a partial download, then moves it into place", async () => {
    const store = openObjectStore({ uri: pathToFileURL(join(work, "store-b")).href });
    const bytes = randomBytes(500_000);
    const local = join(work, "engine-b.bin");
    await writeFile(local, bytes);
    await store.putFile("e.kiln", local);

    const fresh = join(work, "down", "fresh.kiln");
    expect(await store.getFile("e.kiln", fresh)).toBe(createHash("sha256").update(bytes).digest("hex"));
    expect(Buffer.compare(await readFile(fresh), bytes)).toBe(0);

    // A marker prefix that differs from the source proves the first bytes were not fetched again.
    const resumed = join(work, "down", "resumed.kiln");
    const marker = Buffer.alloc(123_456, 0xab);
    await writeFile(`${resumed}.part`, marker);
    const digest = await store.getFile("e.kiln", resumed);
    const got = await readFile(resumed);
    expect(digest).toBe(createHash("sha256").update(got).digest("hex"));
    expect(got.length).toBe(bytes.length);
    expect(Buffer.compare(got.subarray(0, marker.length), marker)).toBe(0);
    expect(Buffer.compare(got.subarray(marker.length), bytes.subarray(marker.length))).toBe(0);
    expect(existsSync(`${resumed}.part`)).toBe(false);
  });

  test("an unsupported scheme is refused naming the URI", () => {
    expect(() => openObjectStore({ uri: "gs://bucket/x" })).toThrow(
      /gs:\/\/bucket\/x: scheme must be s3:\/\/ or file:\/\//,
    );
  });
});

describe("multipart upload part size", () => {
  test("16 MiB parts until S3's 10,000-part limit needs larger ones, always whole MiB", () => {
    const MiB = 1024 * 1024;
    expect(uploadPartBytes(0)).toBe(16 * MiB);
    expect(uploadPartBytes(16 * 1024 * MiB)).toBe(16 * MiB); // a 16 GiB engine: 1,024 parts
    for (const gb of [160, 400, 1000]) {
      const size = gb * 1e9;
      const part = uploadPartBytes(size);
      expect(part % MiB).toBe(0);
      expect(Math.ceil(size / part)).toBeLessThanOrEqual(10_000);
      expect(part).toBeGreaterThan(16 * MiB);
    }
  });
});
