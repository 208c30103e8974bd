// One object through the real S3 server (versitygw, as the cluster tests start it) on loopback: a
// single ranged GET of the whole object against lib/ranged-download.ts's 64 MiB ranges, 8 in
// flight, taking turns over rounds. Loopback has no per-stream limit, so this shows what the
// parallel download costs or saves here, not what it buys against a remote S3 (whose single
// streams are the bottleneck there).
// Usage: npx tsx bench/storage/download.ts [MiB, default 1024] [rounds, default 3]
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { GetObjectCommand, S3Client } from "@aws-sdk/client-s3";
import { openObjectStore } from "../../lib/object-store.js";
import { DEFAULT_CHUNK_BYTES, DEFAULT_CONCURRENCY, downloadRanges } from "../../lib/ranged-download.js";
import { freeLoopbackPorts } from "../../test/cluster/ports.js";
import { stopProcesses } from "../../test/cluster/processes.js";
import { startS3Server } from "../../test/cluster/s3-server.js";

const mib = Number(process.argv[2] ?? 1024);
const rounds = Number(process.argv[3] ?? 3);
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
  await writeFile(local, randomBytes(size));
  const store = openObjectStore({ uri: `s3://${s3.bucket}/bench`, endpoint: s3.endpoint, region: s3.region });
  await store.putFile("object.bin", local);
  const client = new S3Client({ region: s3.region, endpoint: s3.endpoint, forcePathStyle: true });
  const open = async (start: number, end: number) => {
    const out = await client.send(
      new GetObjectCommand({ Bucket: s3.bucket, Key: "bench/object.bin", Range: `bytes=${start}-${end}` }),
    );
    return out.Body as Readable;
  };
  const ways = {
    "one stream": { chunkBytes: size, concurrency: 1 },
    [`${DEFAULT_CHUNK_BYTES / 1024 / 1024} MiB x ${DEFAULT_CONCURRENCY}`]: {},
  };
  const times = new Map<string, number[]>();
  for (let r = 0; r < rounds; r++) {
    for (const [name, options] of Object.entries(ways)) {
      const part = join(work, `down-${r}.part`);
      const t0 = performance.now();
      await downloadRanges(open, part, size, options);
      const s = (performance.now() - t0) / 1000;
      await rm(part);
      times.set(name, [...(times.get(name) ?? []), s]);
      console.log(`round ${r + 1}: ${name}: ${s.toFixed(2)} s (${(mib / 1024 / s).toFixed(2)} GiB/s)`);
    }
  }
  const median = (v: number[]) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)] ?? 0;
  const [single = 0, ranged = 0] = [...times.values()].map(median);
  console.log(
    `${mib} MiB from versitygw on loopback, median of ${rounds}: one stream ${single.toFixed(2)} s, ranged ${ranged.toFixed(2)} s: ${(single / ranged).toFixed(2)}x`,
  );
  client.destroy();
} finally {
  await stopProcesses([server.process.pid]);
  await rm(work, { recursive: true, force: true });
}
