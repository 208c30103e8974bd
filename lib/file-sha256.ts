import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";

/**
 * Reads in 4 MiB chunks: engines and checkpoints are gigabytes, and at the stream's default 64 KiB
 * a 2.5 GB engine hashed in 2.8 s against 2.2-2.3 s (OpenSSL alone: 2.1 s on that machine).
 */
const CHUNK_BYTES = 4 << 20;

/** The hex sha256 of a file's bytes. */
export async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path, { highWaterMark: CHUNK_BYTES }))
    hash.update(chunk as Buffer);
  return hash.digest("hex");
}
