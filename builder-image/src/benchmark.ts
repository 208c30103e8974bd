import type { BenchmarkPoint, EngineBenchmark } from "../../lib/manifest.js";
import { loadEngine, targetFingerprint } from "../../native/binding/engine.js";
import type { ServingEngine } from "../../native/binding/engine-types.js";

/**
 * Short on purpose: it runs inside every build, so a few seconds for a small model. Enough to tell
 * a user what the engine does on this device before it serves; not a substitute for bench/.
 */
export const BENCHMARK_SHAPE = { promptTokens: 32, outputTokens: 16 } as const;

interface RequestTiming {
  ttftMs: number;
  /** Undefined when the request produced a single token (eos first). */
  tpotMs: number | undefined;
  tokens: number;
  endMs: number;
}

async function timeRequest(
  engine: ServingEngine,
  id: string,
  prompt: number[],
  maxTokens: number,
  start: number,
): Promise<RequestTiming> {
  let first: number | undefined;
  let last = start;
  let tokens = 0;
  for await (const batch of engine.submit({ id, promptTokens: prompt, maxTokens })) {
    if (batch.tokens.length === 0) continue;
    last = performance.now();
    first ??= last;
    tokens += batch.tokens.length;
  }
  if (first === undefined) throw new Error(`benchmark request ${id} produced no token`);
  return {
    ttftMs: first - start,
    tpotMs: tokens > 1 ? (last - first) / (tokens - 1) : undefined,
    tokens,
    endMs: last,
  };
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

async function runPoint(
  engine: ServingEngine,
  batchSize: number,
  prompts: (i: number) => number[],
  maxTokens: number,
  tag: string,
): Promise<BenchmarkPoint> {
  const start = performance.now();
  const runs = await Promise.all(
    Array.from({ length: batchSize }, (_, i) =>
      timeRequest(engine, `${tag}-${i}`, prompts(i), maxTokens, start),
    ),
  );
  const tpots = runs.flatMap((r) => (r.tpotMs === undefined ? [] : [r.tpotMs]));
  const tokens = runs.reduce((n, r) => n + r.tokens, 0);
  const wallMs = Math.max(...runs.map((r) => r.endMs)) - start;
  return {
    batchSize,
    ttftMs: mean(runs.map((r) => r.ttftMs)),
    // Every request stopping at its first token would leave no interval to measure; the step time
    // is then best told by the first token's latency.
    tpotMs: tpots.length ? mean(tpots) : mean(runs.map((r) => r.ttftMs)),
    tokensPerSecond: (tokens * 1000) / wallMs,
  };
}

/**
 * Loads the engine as the runtime will (its `sha256` verified by the caller) and times greedy
 * generation at batch 1 and at the engine's max batch, after one warm-up request (first-touch page
 * faults and thread start are not the engine's steady state).
 */
export async function benchmarkEngine(
  enginePath: string,
  sha256: string,
  limits: { maxBatchSize: number; maxInputLen: number; maxSeqLen: number },
): Promise<EngineBenchmark> {
  const promptTokens = Math.max(1, Math.min(BENCHMARK_SHAPE.promptTokens, limits.maxInputLen));
  const outputTokens = Math.max(1, Math.min(BENCHMARK_SHAPE.outputTokens, limits.maxSeqLen - promptTokens));
  const engine = await loadEngine(enginePath, { maxBatchSize: limits.maxBatchSize, verifiedSha256: sha256 });
  try {
    const vocab = engine.info.vocabSize;
    const eos = new Set(engine.info.eosTokenIds);
    // Distinct prompts per request, so the prefix cache serves none of them; eos ids never appear.
    const prompts = (i: number) =>
      Array.from({ length: promptTokens }, (_, j) => {
        let t = (i * 7919 + j * 104729 + 3) % vocab;
        while (eos.has(t)) t = (t + 1) % vocab;
        return t;
      });
    await runPoint(engine, 1, (i) => prompts(i + 1000), 2, "warmup");
    const batch1 = await runPoint(engine, 1, prompts, outputTokens, "b1");
    const maxBatch = await runPoint(engine, limits.maxBatchSize, (i) => prompts(i + 1), outputTokens, "bmax");
    return { device: targetFingerprint(), promptTokens, outputTokens, batch1, maxBatch };
  } finally {
    await engine.close();
  }
}
