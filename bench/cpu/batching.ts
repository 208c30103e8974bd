// CPU serving benchmark: in-flight batching through the native runtime (the ServingEngine the HTTP
// layer uses), at concurrency 1, 8 and 32 on one engine, in one run. Prints one table and rewrites
// the "CPU serving" section of bench/RESULTS.md.
// Usage: npx tsx bench/cpu/batching.ts [--threads N] [--prompt-len N] [--max-tokens N] [--no-write]
import { execFileSync } from "node:child_process";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { cpus, homedir, loadavg } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { loadEngine, type NativeEngineStats } from "../../native/binding/engine.js";
import type { ServingEngine } from "../../native/binding/engine-types.js";
import { build } from "../../native/binding/index.js";
import { writeTinyLlama } from "../../test/fixtures/tiny-checkpoint.js";

const SECTION = "## CPU serving: in-flight batching";
const repo = resolve(import.meta.dirname, "..", "..");

const { values: args } = parseArgs({
  options: {
    threads: { type: "string", default: "2" },
    "prompt-len": { type: "string", default: "64" },
    "max-tokens": { type: "string", default: "64" },
    repeats: { type: "string", default: "3" },
    "no-write": { type: "boolean", default: false },
  },
});
const threads = Number(args.threads);
const promptLen = Number(args["prompt-len"]);
const maxTokens = Number(args["max-tokens"]);
const repeats = Number(args.repeats);

// The shape of the CPU decode benchmark (bench/cpu/bench.py), so the two tables compare.
const shape = {
  vocab: 8192,
  hidden: 512,
  intermediate: 1408,
  layers: 8,
  heads: 8,
  kvHeads: 2,
  tied: false,
  seed: 11,
};

interface Row {
  concurrency: number;
  requests: number;
  seconds: number;
  tokens: number;
  tokPerS: number;
  cpuMsPerTok: number;
  pagesPeak: number;
  pagesTotal: number;
  runningPeak: number;
  steps: number;
}

function prompt(i: number): number[] {
  return Array.from({ length: promptLen }, (_, k) => (i * 7919 + k * 131 + 13) % shape.vocab);
}

/** `requests` requests, at most `concurrency` in flight at a time (a fresh engine, so peaks are this run's). */
async function measure(enginePath: string, concurrency: number, requests: number): Promise<Row> {
  const engine: ServingEngine = await loadEngine(enginePath, {
    threads,
    maxBatchSize: 32,
    maxNumBatchedTokens: 512,
  });
  try {
    // Warm-up: one request, so first-touch page faults are not timed.
    for await (const _ of engine.submit({ id: "warm", promptTokens: prompt(999), maxTokens: 4 })) {
    }
    let next = 0;
    let tokens = 0;
    const started = performance.now();
    const cpuStarted = process.cpuUsage();
    const worker = async () => {
      while (next < requests) {
        const i = next++;
        for await (const b of engine.submit({ id: `r${i}`, promptTokens: prompt(i), maxTokens }))
          tokens += b.tokens.length;
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
    const seconds = (performance.now() - started) / 1000;
    const cpu = process.cpuUsage(cpuStarted);
    const s = engine.stats() as NativeEngineStats;
    return {
      concurrency,
      requests,
      seconds,
      tokens,
      tokPerS: tokens / seconds,
      cpuMsPerTok: (cpu.user + cpu.system) / 1000 / tokens,
      pagesPeak: s.pagesUsedPeak,
      pagesTotal: s.pagesTotal,
      runningPeak: s.runningPeak,
      steps: s.steps,
    };
  } finally {
    await engine.close();
  }
}

async function main(): Promise<void> {
  const work = join(process.env.KILN_CACHE ?? join(homedir(), ".cache", "kiln"), "bench-batching");
  const modelDir = join(work, "model");
  await writeTinyLlama(modelDir, shape);
  // No eos: every request generates exactly max-tokens, so rows compare the same work.
  const config = JSON.parse(await readFile(join(modelDir, "config.json"), "utf8")) as Record<string, unknown>;
  delete config.eos_token_id;
  await writeFile(join(modelDir, "config.json"), `${JSON.stringify(config, null, 2)}\n`);
  await mkdir(work, { recursive: true });
  const enginePath = join(work, "engine.fp32.kiln");
  await build({ modelDir, outPath: enginePath, precision: "fp32", maxSeqLen: 256, maxBatch: 32, threads });

  // The machine is shared, so every level is measured `repeats` times, the levels interleaved, and
  // the run with the median throughput is reported.
  const levels = [
    [1, 4],
    [8, 16],
    [32, 32],
  ] as const;
  const runs: Row[][] = levels.map(() => []);
  for (let r = 0; r < repeats; r++) {
    for (const [i, [concurrency, requests]] of levels.entries())
      runs[i]?.push(await measure(enginePath, concurrency, requests));
  }
  const rows = runs.map((all) => {
    const sorted = [...all].sort((a, b) => a.tokPerS - b.tokPerS);
    return sorted[Math.floor(sorted.length / 2)] as Row;
  });
  const sequential = rows[0]?.tokPerS ?? 1;
  const sequentialCpu = rows[0]?.cpuMsPerTok ?? 1;
  const table = [
    "| concurrency | requests | generated tokens | seconds | tok/s | vs sequential | CPU ms/tok | vs sequential (CPU) | engine steps | running peak | KV pages peak / total |",
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ...rows.map(
      (r) =>
        `| ${r.concurrency} | ${r.requests} | ${r.tokens} | ${r.seconds.toFixed(2)} | ${r.tokPerS.toFixed(1)} | ${(r.tokPerS / sequential).toFixed(2)}x | ${r.cpuMsPerTok.toFixed(2)} | ${(sequentialCpu / r.cpuMsPerTok).toFixed(2)}x | ${r.steps} | ${r.runningPeak} | ${r.pagesPeak} / ${r.pagesTotal} |`,
    ),
  ].join("\n");
  console.log(table);

  if (args["no-write"]) return;
  const commit = execFileSync("git", ["rev-parse", "--short", "HEAD"], {
    cwd: repo,
    encoding: "utf8",
  }).trim();
  const when = new Date().toISOString().slice(0, 16).replace("T", " ");
  const body = `${SECTION}

Measured ${when} UTC at commit \`${commit}\` by \`npx tsx bench/cpu/batching.ts\` on ${cpus()[0]?.model ?? "?"}
(${threads} threads; the machine is shared: load average ${loadavg()[0]?.toFixed(1)} at the end of the run, on ${cpus().length} cores).
Engine: fp32, autotuned, the Llama shape of the CPU decode table (hidden 512, 8 layers, 8 / 2 KV heads,
ffn 1408, vocab 8192, random weights, no eos). Every request: ${promptLen} prompt tokens, ${maxTokens} greedy tokens.
Concurrency N keeps N requests in flight through the ServingEngine (native loop, in-flight batching,
maxNumBatchedTokens 512, KV pages of 16 fp32 positions); concurrency 1 is sequential serving.
Throughput counts generated tokens over the wall time of the whole run (prefill included); each row
is the median-throughput run of ${repeats}, the levels interleaved. CPU ms/tok is the process's CPU
time (every thread: JS, the engine loop and its pool) per generated token; other tenants of the
machine barely move it, so its ratio is the steadier measure of what batching saves.

${table}
`;
  const results = join(repo, "bench", "RESULTS.md");
  let text = await readFile(results, "utf8");
  const start = text.indexOf(SECTION);
  if (start >= 0) {
    const next = text.indexOf("\n## ", start + SECTION.length);
    text = text.slice(0, start) + body + (next >= 0 ? text.slice(next + 1) : "");
  } else {
    text = `${text.trimEnd()}\n\n${body}`;
  }
  await writeFile(results, `${text.trimEnd()}\n`);
}

await main();
