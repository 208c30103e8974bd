// One object through the real S3 server (versitygw, as the cluster tests start it) on loopback: a
// single ranged GET of the whole object against lib/ranged-download.ts's 64 MiB ranges, 8 in
// flight, taking turns over rounds. Loopback has no per-stream limit, so this shows what the
// parallel download costs or saves here, not what it buys against a remote S3 (whose single
// streams are the bottleneck there).
// Then the download's own check, the sha256 the caller expects: hashed after the last range (a pass
// of its own) or in file order while the ranges land (`sha256: true`). With a link rate in MiB/s as
// the third argument every range stream is paced to share that rate, as a remote store's would be.
// Usage: npx tsx bench/storage/download.ts [MiB, default 1024] [rounds, default 3] [MiB/s, default unpaced]
import { randomBytes } from "node:crypto";
import { appendFile, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Readable } from "node:stream";
import { GetObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { sha256File } from "../../lib/file-sha256.js";
import { openObjectStore } from "../../lib/object-store.js";
import { DEFAULT_CHUNK_BYTES, DEFAULT_CONCURRENCY, downloadRanges } from "../../lib/ranged-download.js";
import { freeLoopbackPorts } from "../../test/cluster/ports.js";
import { stopProcesses } from "../../test/cluster/processes.js";
import { startS3Server } from "../../test/cluster/s3-server.js";

const mib = Number(process.argv[2] ?? 1024);
const rounds = Number(process.argv[3] ?? 3);
const linkMiBps = process.argv[4] ? Number(process.argv[4]) : undefined;
const work = await mkdtemp(join(tmpdir(), "kiln-download-bench-"));
const [port] = await freeLoopbackPorts(1);
if (port === undefined) throw new Error("no free loopback port");
const server = await startS3Server({ runDir: work, logDir: work, port, bucket: "bench" });
try {
  await server.ready({ timeoutMs: 30_000, abort: new Promise(() => {}) });
  const { s3 } = server;
  process.env.AWS_ACCESS_KEY_ID = s3.accessKeyId;
  process.env.AWS_SECRET_ACCESS_KEY = s3.secretAccessKey;
  const size = mib * 1024 * 1024;
  const local = join(work, "object.bin");
  // In pieces: one Buffer holds at most 2 GiB.
  await writeFile(local, Buffer.alloc(0));
  for (let at = 0; at < size; at += 256 << 20)
    await appendFile(local, randomBytes(Math.min(256 << 20, size - at)));
  const store = openObjectStore({ uri: `s3://${s3.bucket}/bench`, endpoint: s3.endpoint, region: s3.region });
  await store.putFile("object.bin", local);
  const client = new S3Client({ region: s3.region, endpoint: s3.endpoint, forcePathStyle: true });
  const open = async (start: number, end: number) => {
    const out = await client.send(
      new GetObjectCommand({ Bucket: s3.bucket, Key: "bench/object.bin", Range: `bytes=${start}-${end}` }),
    );
    const body = out.Body as Readable;
    if (!linkMiBps) return body;
    // Paced: every stream waits until the link, shared by all of them, would have carried its bytes.
    return Readable.from(
      (async function* () {
        for await (const chunk of body) {
          carried += (chunk as Buffer).length;
          const due = linkStart + (carried / (linkMiBps * 1024 * 1024)) * 1000;
          // Timers fire a millisecond late at best: a stream sleeps only once it is a few ahead.
          const ahead = due - performance.now();
          if (ahead > 4) await new Promise((resolve) => setTimeout(resolve, ahead));
          yield chunk;
        }
      })(),
    );
  };
  let carried = 0;
  let linkStart = 0;
  const ranged = `${DEFAULT_CHUNK_BYTES / 1024 / 1024} MiB x ${DEFAULT_CONCURRENCY}`;
  const ways: Record<string, (part: string) => Promise<unknown>> = {
    "one stream": (part) => downloadRanges(open, part, size, { chunkBytes: size, concurrency: 1 }),
    [ranged]: (part) => downloadRanges(open, part, size),
    [`${ranged}, then sha256`]: async (part) => {
      await downloadRanges(open, part, size);
      return sha256File(part);
    },
    [`${ranged}, sha256 as ranges land`]: (part) => downloadRanges(open, part, size, { sha256: true }),
  };
  const times = new Map<string, number[]>();
  for (let r = 0; r < rounds; r++) {
    for (const [name, way] of Object.entries(ways)) {
      const part = join(work, `down-${r}.part`);
      carried = 0;
      linkStart = performance.now();
      const t0 = performance.now();
      await way(part);
      const s = (performance.now() - t0) / 1000;
      await rm(part);
      times.set(name, [...(times.get(name) ?? []), s]);
      console.log(`round ${r + 1}: ${name}: ${s.toFixed(2)} s (${(mib / 1024 / s).toFixed(2)} GiB/s)`);
    }
  }
  const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)] ?? 0;
  const link = linkMiBps ? `paced to ${linkMiBps} MiB/s` : "unpaced";
  console.log(`${mib} MiB from versitygw on loopback (${link}), medians of ${rounds}:`);
  for (const [name, v] of times) console.log(`  ${name}: ${median(v).toFixed(2)} s`);
  client.destroy();
} finally {
  await stopProcesses([server.process.pid]);
  await rm(work, { recursive: true, force: true });
}
