import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { testS3 } from "../test/cluster/env.js";
import { type ObjectStore, openObjectStore } from "./object-store.js";

let work: string;
let store: ObjectStore;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "kiln-s3-store-"));
  const s3 = testS3();
  // Pods get S3 credentials the same way: environment variables from a Secret.
  process.env.AWS_ACCESS_KEY_ID = s3.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = s3.secretAccessKey;
  store = openObjectStore({
    uri: `s3://${s3.bucket}/store-test-${process.pid}-${Date.now()}`,
    endpoint: s3.endpoint,
    region: s3.region,
  });
});
afterAll(async () => rm(work, { recursive: true, force: true }));

describe("s3:// object store against the real S3 server", () => {
  test("putFile uploads a multi-part engine with checksums; size, list and get see exactly it", async () => {
    const bytes = randomBytes(40 * 1024 * 1024 + 4321);
    const local = join(work, "big.kiln");
    await writeFile(local, bytes);
    let sent = 0;
    await store.putFile("engines/k/engine.kiln", local, (n) => {
      sent = n;
    });
    await store.put("engines/k/manifest.json", '{"ok":true}');
    expect(sent).toBe(bytes.length);
    expect(await store.size("engines/k/engine.kiln")).toBe(bytes.length);
    expect(await store.size("engines/k/absent")).toBeUndefined();
    expect(await store.list("engines/k")).toEqual([
      { path: "engines/k/engine.kiln", size: bytes.length },
      { path: "engines/k/manifest.json", size: 11 },
    ]);
    expect((await store.get("engines/k/manifest.json"))?.toString()).toBe('{"ok":true}');
    expect(await store.get("engines/k/absent")).toBeUndefined();

    const down = join(work, "down.kiln");
    expect(await store.getFile("engines/k/engine.kiln", down)).toBe(
      createHash("sha256").update(bytes).digest("hex"),
    );
    expect(Buffer.compare(await readFile(down), bytes)).toBe(0);
  });

  test("getFile resumes with a ranged GET from where a partial download stopped", async () => {
    const bytes = randomBytes(3 * 1024 * 1024);
    const local = join(work, "small.kiln");
    await writeFile(local, bytes);
    await store.putFile("engines/r/engine.kiln", local);
    const dest = join(work, "resumed.kiln");
    const marker = Buffer.alloc(1_000_000, 0xcd);
    await writeFile(`${dest}.part`, marker);
    const seen: number[] = [];
    const digest = await store.getFile("engines/r/engine.kiln", dest, (n) => seen.push(n));
    const got = await readFile(dest);
    // The kept prefix (the marker) is hashed too: the digest is of the file as it lies.
    expect(digest).toBe(createHash("sha256").update(got).digest("hex"));
    expect(Buffer.compare(got.subarray(0, marker.length), marker)).toBe(0);
    expect(Buffer.compare(got.subarray(marker.length), bytes.subarray(marker.length))).toBe(0);
    expect(seen[0]).toBeGreaterThan(marker.length);
    expect(seen.at(-1)).toBe(bytes.length);
    expect(existsSync(`${dest}.part`)).toBe(false);
  });
});
