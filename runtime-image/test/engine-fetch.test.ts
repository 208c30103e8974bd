import { existsSync } from "node:fs";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { downloadRanges, type RangeOpener } from "../../lib/ranged-download.js";
import { downloadVerified, type EngineSource, fetchEngine, StartupError } from "../src/engine-fetch.js";
import { localTargetFingerprint } from "../src/engine-loader.js";
import { buildTinyEngine, forTarget, sha256, storeEngine } from "./fixtures/engine-store.js";

const log = pino({ level: "silent" });
let work: string;
let engine: Buffer;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "kiln-fetch-"));
  engine = await buildTinyEngine(work);
}, 120_000);

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function source(
  stored: { uri: string; sha256: string },
  extra: Partial<EngineSource> = {},
): Promise<EngineSource> {
  return {
    uri: stored.uri,
    sha256: stored.sha256,
    cacheDir: await mkdtemp(join(work, "cache-")),
    store: {},
    localFingerprint: localTargetFingerprint(),
    attempts: 2,
    ...extra,
  };
}

describe("engine fetch (real engine file, file:// store)", () => {
  test("the local fingerprint is the one the native compiler writes into engines built here", async () => {
    const stored = await storeEngine(join(work, "store"), engine);
    const fetched = await fetchEngine(await source(stored), log);
    expect((fetched.header.target as { fingerprint: string }).fingerprint).toBe(localTargetFingerprint());
  });

  test("downloads into the cache under its sha256, verified, with the manifest and header", async () => {
    const stored = await storeEngine(join(work, "store"), engine);
    const src = await source(stored);
    const fetched = await fetchEngine(src, log);
    expect(fetched.path).toBe(join(src.cacheDir, `${stored.sha256}.kiln`));
    expect(fetched.manifest.key).toBe(stored.key);
    expect(fetched.manifest.sha256).toBe(stored.sha256);
    expect(fetched.header.format).toBe("kiln-engine");
    expect(await readdir(src.cacheDir)).toEqual([`${stored.sha256}.kiln`]);
  });

  test("a partial download left by an earlier attempt is resumed, not restarted", async () => {
    const stored = await storeEngine(join(work, "store"), engine);
    const src = await source(stored);
    const part = join(src.cacheDir, `${stored.sha256}.kiln.part`);
    // Half the file is already here; the other half of the cached bytes would be wrong if the
    // download started over and appended, so a correct sha256 proves it resumed at the offset.
    await writeFile(part, engine.subarray(0, Math.floor(engine.length / 2)));
    const fetched = await fetchEngine(src, log);
    expect(sha256(await readFile(fetched.path))).toBe(stored.sha256);
    expect(existsSync(part)).toBe(false);
  });

  test("a cached engine is reused, and a damaged cached one is fetched again", async () => {
    const stored = await storeEngine(join(work, "store"), engine);
    const src = await source(stored);
    const cached = join(src.cacheDir, `${stored.sha256}.kiln`);
    await writeFile(cached, Buffer.alloc(16));
    const fetched = await fetchEngine(src, log);
    expect(fetched.path).toBe(cached);
    expect(fetched.header.format).toBe("kiln-engine");
  });

  test("a wrong expected sha256 is refused before anything is downloaded", async () => {
    const stored = await storeEngine(join(work, "store"), engine);
    const src = await source({ uri: stored.uri, sha256: "0".repeat(64) });
    await expect(fetchEngine(src, log)).rejects.toThrow(
      /manifest.json describes sha256 [0-9a-f]{64} but this deployment expects 0{64}/,
    );
    expect(await readdir(src.cacheDir)).toEqual([]);
  });

  test("engine bytes that do not match the manifest's sha256 are refused and not kept", async () => {
    const corrupted = Buffer.from(engine);
    corrupted[corrupted.length - 1] = (corrupted[corrupted.length - 1] ?? 0) ^ 0xff;
    const stored = await storeEngine(join(work, "store"), corrupted, { manifestSha256: sha256(engine) });
    const src = await source({ uri: stored.uri, sha256: sha256(engine) });
    const err = await fetchEngine(src, log).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StartupError);
    expect((err as Error).message).toMatch(/sha256 mismatch: expected [0-9a-f]{64}, downloaded [0-9a-f]{64}/);
    expect(await readdir(src.cacheDir)).toEqual([]);
  });

  test("a missing manifest is refused: the engine's build never finished", async () => {
    const stored = await storeEngine(join(work, "store"), engine, { manifest: false });
    await expect(fetchEngine(await source(stored), log)).rejects.toThrow(/no manifest.json beside it/);
  });

  test("a manifest stored under another key is refused naming the field", async () => {
    const stored = await storeEngine(join(work, "store"), engine);
    await expect(fetchEngine(await source(stored, { key: "f".repeat(64) }), log)).rejects.toThrow(
      /manifest.json is invalid: manifest.key must be f{64}/,
    );
  });

  test("an engine built for another target is refused with both fingerprints in the message", async () => {
    const forged = forTarget(engine, "cuda:sm_90:cuda12.4");
    const stored = await storeEngine(join(work, "store"), forged);
    await expect(fetchEngine(await source(stored), log)).rejects.toThrow(
      /was built for target "cuda:sm_90:cuda12\.4_*" but this machine is "cpu:/,
    );
  });

  test("a missing engine file fails after its retries with the URI in the message", async () => {
    const stored = await storeEngine(join(work, "store"), engine);
    await rm(join(stored.dir, "engine.kiln"));
    await expect(fetchEngine(await source(stored), log)).rejects.toThrow(
      /download failed after 2 attempts: .*ENOENT/,
    );
  });
});

describe("ranged download (downloadVerified with a counting opener)", () => {
  /** Serves `bytes` by range, in two pieces per range; records each range and how many are open. */
  function rangesOf(bytes: Buffer, failFirst: Set<number> = new Set(), chunkBytes = 1000) {
    const opened: number[] = [];
    let inFlight = 0;
    let maxInFlight = 0;
    const open: RangeOpener = async (start, end) => {
      const index = start / chunkBytes;
      opened.push(index);
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      const body = bytes.subarray(start, end + 1);
      const half = Math.floor(body.length / 2);
      const fail = failFirst.delete(index);
      return Readable.from(
        (async function* () {
          try {
            await new Promise((resolve) => setTimeout(resolve, 2));
            yield body.subarray(0, half);
            if (fail) throw new Error(`connection reset in chunk ${index}`);
            yield body.subarray(half);
          } finally {
            inFlight--;
          }
        })(),
      );
    };
    return { open, opened, maxInFlight: () => maxInFlight };
  }

  const options = (extra: Record<string, unknown> = {}) => ({
    sha256: sha256(engine),
    attempts: 2,
    chunkBytes: 1000,
    concurrency: 4,
    ...extra,
  });

  test("fetches every chunk once, several at a time, each at its offset; leaves no part or progress file", async () => {
    const dir = await mkdtemp(join(work, "ranged-"));
    const path = join(dir, "e.kiln");
    const ranges = rangesOf(engine);
    await downloadVerified(ranges.open, path, engine.length, options(), log);
    expect(sha256(await readFile(path))).toBe(sha256(engine));
    expect(ranges.opened.sort((a, b) => a - b)).toEqual(
      Array.from({ length: Math.ceil(engine.length / 1000) }, (_, i) => i),
    );
    expect(ranges.maxInFlight()).toBeGreaterThan(1);
    expect(await readdir(dir)).toEqual(["e.kiln"]);
  });

  test("a chunk cut off mid-stream is fetched again on the next attempt, and only it", async () => {
    const dir = await mkdtemp(join(work, "ranged-"));
    const path = join(dir, "e.kiln");
    const ranges = rangesOf(engine, new Set([3]));
    await downloadVerified(ranges.open, path, engine.length, options(), log);
    expect(sha256(await readFile(path))).toBe(sha256(engine));
    const counts = new Map<number, number>();
    for (const i of ranges.opened) counts.set(i, (counts.get(i) ?? 0) + 1);
    expect(counts.get(3)).toBe(2);
    expect([...counts.entries()].filter(([i, n]) => i !== 3 && n !== 1)).toEqual([]);
  });

  test("the digest hashed while ranges land is the file's, whichever order they land in", async () => {
    const dir = await mkdtemp(join(work, "ranged-"));
    const part = join(dir, "e.kiln.part");
    const chunks = Math.ceil(engine.length / 1000);
    // Chunk 0 lands last and chunk 2 is cut off once mid-stream after 500 wrong bytes: the hash
    // waits for both, then catches up, and must never read chunk 2 before its retry rewrote it.
    let failChunk2 = true;
    const opened: number[] = [];
    const open: RangeOpener = async (start, end) => {
      opened.push(start / 1000);
      const body = engine.subarray(start, end + 1);
      const fail = start === 2000 && failChunk2;
      failChunk2 &&= !fail;
      return Readable.from(
        (async function* () {
          await new Promise((resolve) => setTimeout(resolve, start === 0 ? 40 : 1));
          if (fail) {
            yield Buffer.alloc(500, 0xee);
            throw new Error("connection reset in chunk 2");
          }
          yield body;
        })(),
      );
    };
    const digest = await downloadRanges(open, part, engine.length, {
      sha256: true,
      chunkBytes: 1000,
      concurrency: 4,
      attempts: 2,
    });
    expect(digest).toBe(sha256(engine));
    expect(sha256(await readFile(part))).toBe(sha256(engine));
    expect(opened.filter((i) => i === 2).length).toBe(2);
    expect(opened.length).toBe(chunks + 1);
    // Resumed from a plain prefix (what a single-stream download left): the prefix is hashed too.
    const resumed = join(dir, "prefix.kiln.part");
    await writeFile(resumed, engine.subarray(0, 2500));
    expect(
      await downloadRanges(rangesOf(engine).open, resumed, engine.length, { sha256: true, chunkBytes: 1000 }),
    ).toBe(sha256(engine));
    expect(
      await downloadRanges(rangesOf(engine).open, join(dir, "plain.part"), engine.length, {}),
    ).toBeUndefined();
  });

  test("a download that stopped before its first chunk landed is not taken for a finished one", async () => {
    const dir = await mkdtemp(join(work, "ranged-"));
    const part = join(dir, "e.kiln.part");
    const refused: RangeOpener = async () => {
      throw new Error("connection refused");
    };
    await expect(downloadRanges(refused, part, engine.length, { chunkBytes: 1000 })).rejects.toThrow(
      /connection refused/,
    );
    // The part is full size (holes) already; its progress file says nothing in it is there yet.
    expect((await readFile(part)).length).toBe(engine.length);
    expect(JSON.parse(await readFile(`${part}.progress`, "utf8")).done).toEqual([]);
    const again = rangesOf(engine);
    expect(await downloadRanges(again.open, part, engine.length, { sha256: true, chunkBytes: 1000 })).toBe(
      sha256(engine),
    );
    expect(again.opened.length).toBe(Math.ceil(engine.length / 1000));
  });

  test("a restarted download fetches only the chunks its progress file does not list", async () => {
    const dir = await mkdtemp(join(work, "ranged-"));
    const path = join(dir, "e.kiln");
    // One at a time: chunks 0-4 arrive, chunk 5 fails and the only attempt is spent (a pod killed).
    const first = rangesOf(engine, new Set([5]));
    await expect(
      downloadVerified(first.open, path, engine.length, options({ attempts: 1, concurrency: 1 }), log),
    ).rejects.toThrow(/download failed after 1 attempts: connection reset in chunk 5/);
    expect(JSON.parse(await readFile(`${path}.part.progress`, "utf8")).done).toEqual([0, 1, 2, 3, 4]);
    const second = rangesOf(engine);
    await downloadVerified(second.open, path, engine.length, options(), log);
    expect(sha256(await readFile(path))).toBe(sha256(engine));
    expect(Math.min(...second.opened)).toBe(5);
    expect(second.opened.length).toBe(Math.ceil(engine.length / 1000) - 5);
  });
});
