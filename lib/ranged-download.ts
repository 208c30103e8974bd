// Large objects (engines, checkpoints) come down as ranged GETs, several in flight, each written at
// its offset of `<file>.part`: one stream from S3 runs far below the link, and a failure costs one
// range, not the download. `<file>.part.progress` lists the ranges already written, so a later
// attempt, or a restarted pod, fetches only the ones missing.
import { createHash } from "node:crypto";
import { type FileHandle, open, readFile, rm, stat, truncate, writeFile } from "node:fs/promises";
import type { Readable } from "node:stream";

/** The object's bytes [start, end] (inclusive, as an HTTP range). */
export type RangeOpener = (start: number, end: number) => Promise<Readable>;

export interface RangedDownloadOptions {
  /** Bytes per ranged GET (default 64 MiB): the unit a resumed download keeps or fetches again. */
  chunkBytes?: number;
  /** Ranged GETs in flight at once (default 8). */
  concurrency?: number;
  /** Attempts, each fetching what the ones before left (default 1). */
  attempts?: number;
  /** Wait before attempt `attempt + 1`. */
  retryDelayMs?: (attempt: number) => number;
  /** After each write: the bytes present so far (kept ones included) and the size. */
  onProgress?: (bytes: number, size: number) => void;
  /** An attempt failed and another follows. */
  onRetry?: (attempt: number, err: Error, rangesLeft: number) => void;
  /**
   * Also hash the file while it comes down: each range is read back and hashed once every range
   * before it has landed, so the download's own check (the sha256 the caller expects) needs no
   * pass of its own afterwards. downloadRanges then returns the hex digest.
   */
  sha256?: boolean;
}

export const DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024;
export const DEFAULT_CONCURRENCY = 8;

/** Ranges `base + i · chunkBytes` onward; bytes before `base` were there already (a plain prefix). */
interface Progress {
  size: number;
  chunkBytes: number;
  base: number;
  done: number[];
}

/** A file's size, or undefined when there is none. */
export async function sizeOf(path: string): Promise<number | undefined> {
  try {
    return (await stat(path)).size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
}

/**
 * What `part` already holds: the ranges its progress file lists (for this size and chunk size), or,
 * without one, its bytes as a prefix (what a single-stream download leaves), kept whole.
 */
async function resumeFrom(
  part: string,
  progressFile: string,
  size: number,
  chunkBytes: number,
): Promise<Progress> {
  const fresh: Progress = { size, chunkBytes, base: 0, done: [] };
  const have = await sizeOf(part);
  if (have === undefined) return fresh;
  let text: string;
  try {
    text = await readFile(progressFile, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    return have <= size ? { ...fresh, base: have } : fresh;
  }
  try {
    const p = JSON.parse(text) as Progress;
    const ok =
      p.size === size &&
      p.chunkBytes === chunkBytes &&
      have === size &&
      Number.isInteger(p.base) &&
      p.base >= 0 &&
      p.base <= size &&
      Array.isArray(p.done) &&
      p.done.every((i) => Number.isInteger(i) && i >= 0 && p.base + i * chunkBytes < size);
    return ok ? p : fresh;
  } catch {
    return fresh; // a progress file cut short by a crash: start over
  }
}

/** Read-back size of the in-order hash: large reads keep it near OpenSSL's own speed. */
const HASH_READ_BYTES = 4 << 20;

/**
 * The sha256 of `part` in file order, advanced as far as the bytes present allow: the prefix before
 * `base`, then range after range while `done` has the next one. `advance` calls run one at a time.
 */
function inOrderHash(part: string, size: number, base: number, chunkBytes: number, done: Set<number>) {
  const hash = createHash("sha256");
  let hashed = 0;
  let next = 0;
  let chain = Promise.resolve();
  let failure: Error | undefined;
  const advance = async () => {
    if (failure) return;
    while (done.has(next)) next++;
    const end = Math.min(size, base + next * chunkBytes);
    if (end <= hashed) return;
    const file = await open(part, "r");
    try {
      const buffer = Buffer.allocUnsafe(Math.min(HASH_READ_BYTES, end - hashed));
      while (hashed < end) {
        const { bytesRead } = await file.read(buffer, 0, Math.min(buffer.length, end - hashed), hashed);
        if (bytesRead === 0) throw new Error(`${part} ends at ${hashed} while hashing to ${end}`);
        hash.update(buffer.subarray(0, bytesRead));
        hashed += bytesRead;
      }
    } finally {
      await file.close();
    }
  };
  return {
    /** Hashes what has landed since the last call, behind any call still running. */
    pump(): Promise<void> {
      chain = chain.then(advance).catch((err: Error) => {
        failure ??= new Error(`hashing ${part} as it downloaded: ${err.message}`, { cause: err });
      });
      return chain;
    },
    /** Settles once no hash read is running. */
    idle(): Promise<void> {
      return chain;
    },
    async digest(): Promise<string> {
      await this.pump();
      if (failure) throw failure;
      if (hashed !== size) throw new Error(`${part}: hashed ${hashed} of ${size} bytes`);
      return hash.digest("hex");
    },
  };
}

/**
 * Fills `part` with the `size` bytes `open` serves; on success the progress file is gone and `part`
 * holds every byte (the caller verifies and renames it). Throws the last failure once the attempts
 * are spent, leaving `part` and its progress file for a later call to resume. Returns the file's
 * sha256 where `options.sha256` asks for it.
 */
export async function downloadRanges(
  openRange: RangeOpener,
  part: string,
  size: number,
  options: RangedDownloadOptions & { sha256: true },
): Promise<string>;
export async function downloadRanges(
  openRange: RangeOpener,
  part: string,
  size: number,
  options?: RangedDownloadOptions,
): Promise<string | undefined>;
export async function downloadRanges(
  openRange: RangeOpener,
  part: string,
  size: number,
  options: RangedDownloadOptions = {},
): Promise<string | undefined> {
  const chunkBytes = options.chunkBytes ?? DEFAULT_CHUNK_BYTES;
  const concurrency = Math.max(1, options.concurrency ?? DEFAULT_CONCURRENCY);
  const attempts = options.attempts ?? 1;
  const progressFile = `${part}.progress`;
  const progress = await resumeFrom(part, progressFile, size, chunkBytes);
  const { base } = progress;
  if (base === 0 && progress.done.length === 0) {
    await rm(part, { force: true });
    await rm(progressFile, { force: true });
  }
  // The progress file before the file grows: a full-size part with none beside it reads as a
  // finished single-stream download, so a process killed between the two would hand its holes on.
  const snapshotOf = (done: Iterable<number>): Progress => ({
    size,
    chunkBytes,
    base,
    done: [...done].sort((a, b) => a - b),
  });
  await writeFile(progressFile, JSON.stringify(snapshotOf(progress.done)));
  // The file at its full size, so every range writes at its own offset.
  await (await open(part, "a")).close();
  await truncate(part, size);

  const ranges = Math.ceil((size - base) / chunkBytes);
  const done = new Set(progress.done);
  const bytesOf = (i: number) => Math.min(chunkBytes, size - base - i * chunkBytes);
  let present = base + [...done].reduce((sum, i) => sum + bytesOf(i), 0);
  const hasher = options.sha256 ? inOrderHash(part, size, base, chunkBytes, done) : undefined;
  void hasher?.pump(); // what an earlier attempt or a plain prefix left
  let saving = Promise.resolve();
  const record = (index: number) => {
    done.add(index);
    const snapshot = snapshotOf(done);
    saving = saving.then(() => writeFile(progressFile, JSON.stringify(snapshot)));
    return saving;
  };
  const fetchRange = async (file: FileHandle, index: number) => {
    const start = base + index * chunkBytes;
    const end = start + bytesOf(index) - 1;
    let at = start;
    try {
      for await (const chunk of await openRange(start, end)) {
        const bytes = chunk as Buffer;
        if (at + bytes.length > end + 1)
          throw new Error(`range ${start}-${end} returned more than it asked for`);
        await file.write(bytes, 0, bytes.length, at);
        at += bytes.length;
        present += bytes.length;
        options.onProgress?.(present, size);
      }
      if (at !== end + 1)
        throw new Error(`range ${start}-${end}: got ${at - start} of ${end + 1 - start} bytes`);
    } catch (err) {
      present -= at - start; // written again next attempt
      throw err;
    }
    await record(index);
    void hasher?.pump();
  };

  for (let attempt = 1; done.size < ranges; attempt++) {
    const todo = Array.from({ length: ranges }, (_, i) => i).filter((i) => !done.has(i));
    const file = await open(part, "r+");
    let failure: Error | undefined;
    try {
      // Workers take the next missing range until none is left or one of them failed.
      const worker = async () => {
        for (let next = todo.shift(); next !== undefined && !failure; next = todo.shift()) {
          try {
            await fetchRange(file, next);
          } catch (err) {
            failure ??= err as Error;
          }
        }
      };
      await Promise.all(Array.from({ length: Math.min(concurrency, todo.length) }, worker));
    } finally {
      await file.close();
      await saving;
    }
    if (!failure) break;
    if (attempt >= attempts) {
      await hasher?.idle(); // no read of `part` outlives the call
      throw failure;
    }
    options.onRetry?.(attempt, failure, ranges - done.size);
    await new Promise((resolve) => setTimeout(resolve, options.retryDelayMs?.(attempt) ?? 0));
  }
  await rm(progressFile, { force: true });
  return hasher?.digest();
}
