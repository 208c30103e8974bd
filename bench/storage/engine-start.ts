// What a runtime pod spends reading a fetched engine before it serves, the two ways the addon can
// load it, taking turns over rounds: "self-checked" (inspect hashes every section, the loader hashes
// them again and then the whole file), the path of a caller with no digest; and "verified once"
// (the runtime: the whole file's sha256 against the deployment's digest, then inspect and load
// taking that digest, as runtime-image/src/engine-fetch.ts and main.ts do). The engine must be for
// this machine's target (a CPU engine here).
// Usage: npx tsx bench/storage/engine-start.ts ENGINE.kiln [rounds, default 3]
import { sha256File } from "../../lib/file-sha256.js";
import { loadEngine } from "../../native/binding/engine.js";
import { inspect } from "../../native/binding/index.js";

const arg = process.argv[2];
if (!arg) throw new Error("usage: npx tsx bench/storage/engine-start.ts ENGINE.kiln [rounds]");
const path: string = arg;
const rounds = Number(process.argv[3] ?? 3);

const seconds = async (fn: () => Promise<unknown> | unknown) => {
  const t0 = performance.now();
  await fn();
  return (performance.now() - t0) / 1e3;
};

// The smallest KV cache the engine takes: the cache is not what is measured.
const header = inspect(path, { verifySections: false }) as { limits?: { max_seq_len?: number } };
const kvCachePages = Math.ceil((header.limits?.max_seq_len ?? 4096) / 16);

async function selfChecked() {
  const inspected = await seconds(() => inspect(path));
  const loaded = await seconds(async () => (await loadEngine(path, { kvCachePages })).close());
  return { hash: 0, inspect: inspected, load: loaded };
}

async function verifiedOnce() {
  let digest = "";
  const hash = await seconds(async () => {
    digest = await sha256File(path);
  });
  const inspected = await seconds(() => inspect(path, { verifySections: false }));
  const loaded = await seconds(async () =>
    (await loadEngine(path, { kvCachePages, verifiedSha256: digest })).close(),
  );
  return { hash, inspect: inspected, load: loaded };
}

type Times = Awaited<ReturnType<typeof selfChecked>>;
const runs: Record<string, Times[]> = { "self-checked": [], "verified once": [] };
for (let r = 0; r < rounds; r++) {
  runs["self-checked"]?.push(await selfChecked());
  runs["verified once"]?.push(await verifiedOnce());
}
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;
console.log(`${path}, ${rounds} rounds, medians (s):`);
console.log("| path | whole-file sha256 | inspect | load | total |");
console.log("|---|---:|---:|---:|---:|");
for (const [name, times] of Object.entries(runs)) {
  const col = (k: keyof Times) => median(times.map((t) => t[k]));
  const total = median(times.map((t) => t.hash + t.inspect + t.load));
  console.log(
    `| ${name} | ${col("hash").toFixed(2)} | ${col("inspect").toFixed(2)} | ${col("load").toFixed(2)} | ${total.toFixed(2)} |`,
  );
}
process.exit(0);
