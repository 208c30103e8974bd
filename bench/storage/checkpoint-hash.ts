// What the builder spends hashing a checkpoint it reads in place (pvc://): its shards one after
// another on the main thread (sha256File, as before) against side by side on worker threads
// (sha256Files), taking turns over rounds. Random shards are written to a temporary folder first;
// the second and later rounds read them from the page cache, so this measures the hashing, not
// the disk.
// Usage: npx tsx bench/storage/checkpoint-hash.ts [shards, default 4] [MiB each, default 512] [rounds, default 3]
import { randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { availableParallelism, tmpdir } from "node:os";
import { join } from "node:path";
import { sha256File, sha256Files } from "../../lib/file-sha256.js";

const shards = Number(process.argv[2] ?? 4);
const mib = Number(process.argv[3] ?? 512);
const rounds = Number(process.argv[4] ?? 3);

const dir = await mkdtemp(join(tmpdir(), "kiln-hash-bench-"));
try {
  const paths: string[] = [];
  for (let i = 0; i < shards; ++i) {
    const path = join(dir, `model-${i}.safetensors`);
    await writeFile(path, randomBytes(mib << 20));
    paths.push(path);
  }
  const seconds = async (fn: () => Promise<unknown>) => {
    const t0 = performance.now();
    await fn();
    return (performance.now() - t0) / 1e3;
  };
  const serial: number[] = [];
  const parallel: number[] = [];
  for (let r = 0; r < rounds; ++r) {
    serial.push(
      await seconds(async () => {
        for (const path of paths) await sha256File(path);
      }),
    );
    parallel.push(await seconds(() => sha256Files(paths)));
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
  const gb = (shards * (mib << 20)) / 1e9;
  console.log(
    `${shards} shards x ${mib} MiB (${gb.toFixed(2)} GB), ${availableParallelism()} cores, ${rounds} rounds`,
  );
  console.log(
    `one after another: ${median(serial).toFixed(2)} s (${serial.map((s) => s.toFixed(2)).join(", ")})`,
  );
  console.log(
    `side by side:      ${median(parallel).toFixed(2)} s (${parallel.map((s) => s.toFixed(2)).join(", ")})`,
  );
  console.log(`ratio: ${(median(serial) / median(parallel)).toFixed(2)}x`);
} finally {
  await rm(dir, { recursive: true, force: true });
}
