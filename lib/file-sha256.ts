import { createHash, type Hash } from "node:crypto";
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";

/**
 * Reads in 4 MiB chunks: engines and checkpoints are gigabytes, and at the stream's default 64 KiB
 * a 2.5 GB engine hashed in 2.8 s against 2.2-2.3 s (OpenSSL alone: 2.1 s on that machine).
 */
const CHUNK_BYTES = 4 << 20;

/** Feeds a file's bytes into `hash`: the first `bytes` of them, or all. */
export async function hashFileInto(hash: Hash, path: string, bytes?: number): Promise<void> {
  if (bytes === 0) return;
  const range = bytes === undefined ? {} : { end: bytes - 1 };
  for await (const chunk of createReadStream(path, { highWaterMark: CHUNK_BYTES, ...range }))
    hash.update(chunk as Buffer);
}

/** The hex sha256 of a file's bytes. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  await hashFileInto(hash, path);
  return hash.digest("hex");
}

/**
 * A file below this is hashed on the calling thread: a worker costs tens of milliseconds to start,
 * more than hashing a config or tokenizer file.
 */
const WORKER_MIN_BYTES = 64 << 20;

// sha256File's loop in a worker (an eval'd CommonJS script, so it runs the same from sources under
// vitest or tsx and from compiled output).
const WORKER_SOURCE = `
const { parentPort, workerData } = require("node:worker_threads");
const { createHash } = require("node:crypto");
const { createReadStream } = require("node:fs");
(async () => {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(workerData.path, { highWaterMark: ${CHUNK_BYTES} })) hash.update(chunk);
  parentPort.postMessage(hash.digest("hex"));
})().catch((err) => parentPort.postMessage({ error: String(err && err.message ? err.message : err) }));
`;

function sha256OnWorker(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { path } });
    let settled = false;
    worker.once("message", (message: string | { error: string }) => {
      settled = true;
      if (typeof message === "string") resolve(message);
      else reject(new Error(`sha256 of ${path}: ${message.error}`));
    });
    worker.once("error", (err) => {
      settled = true;
      reject(new Error(`sha256 of ${path}: ${err.message}`));
    });
    worker.once("exit", (code) => {
      if (!settled) reject(new Error(`sha256 of ${path}: the hashing worker exited with code ${code}`));
    });
  });
}

/**
 * The hex sha256 of each file, in the order given. Node hashes on the thread that reads, so a
 * checkpoint's shards hashed one after another use one core; here files of 64 MiB and more are
 * hashed on worker threads, up to `parallel` at a time (bench/storage/checkpoint-hash.ts).
 */
export async function sha256Files(
  paths: readonly string[],
  parallel: number = availableParallelism(),
): Promise<string[]> {
  if (!Number.isInteger(parallel) || parallel < 1)
    throw new Error(`sha256Files: parallel must be a positive integer, got ${parallel}`);
  const sizes = await Promise.all(paths.map(async (path) => (await stat(path)).size));
  const digests: string[] = new Array(paths.length);
  let next = 0;
  const lane = async () => {
    while (next < paths.length) {
      const i = next++;
      const path = paths[i] as string;
      digests[i] = (sizes[i] ?? 0) < WORKER_MIN_BYTES ? await sha256File(path) : await sha256OnWorker(path);
    }
  };
  await Promise.all(Array.from({ length: Math.min(parallel, paths.length) }, lane));
  return digests;
}
