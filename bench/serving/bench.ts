import { type Api, type RequestResult, timedRequest } from "./client.js";
import { type Summary, summarize } from "./stats.js";
import { type BenchPrompt, poissonArrivals } from "./workload.js";

export interface BenchOptions {
  /** OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1. */
  baseUrl: string;
  api: Api;
  /** Model id; by default the first one /v1/models lists. */
  model?: string;
  prompts: BenchPrompt[];
  /** Poisson arrival rate in requests/s; Infinity sends as fast as concurrency allows. */
  requestRate: number;
  /** Most requests in flight at once. */
  concurrency: number;
  seed: number;
  /** Hard bound on the whole run: requests still running then are aborted and count as failed. */
  timeoutS: number;
}

export async function resolveModel(baseUrl: string): Promise<string> {
  const res = await fetch(`${baseUrl}/models`);
  if (!res.ok) throw new Error(`GET ${baseUrl}/models: HTTP ${res.status}`);
  const id = ((await res.json()) as { data?: { id: string }[] }).data?.[0]?.id;
  if (!id) throw new Error(`GET ${baseUrl}/models lists no model`);
  return id;
}

/** Sends every prompt (at its arrival time, within the concurrency bound) and summarizes. */
export async function runBenchmark(options: BenchOptions): Promise<Summary> {
  const model = options.model ?? (await resolveModel(options.baseUrl));
  const arrivals = poissonArrivals(options.prompts.length, options.requestRate, options.seed);
  const deadline = new AbortController();
  const timer = setTimeout(() => deadline.abort(), options.timeoutS * 1000);
  const results: RequestResult[] = [];
  const start = performance.now();
  let next = 0;
  // Each worker takes the next prompt, waits for its arrival time, sends it: `concurrency` workers
  // bound the requests in flight; arrivals that fall behind are sent as soon as a worker frees up.
  const worker = async () => {
    for (;;) {
      const i = next++;
      const item = options.prompts[i];
      if (item === undefined || deadline.signal.aborted) return;
      const wait = (arrivals[i] ?? 0) * 1000 - (performance.now() - start);
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      results.push(await timedRequest(options.baseUrl, options.api, model, item, deadline.signal));
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.max(1, options.concurrency) }, worker));
  } finally {
    clearTimeout(timer);
  }
  const durationS = (performance.now() - start) / 1000;
  const skipped = options.prompts.length - results.length;
  for (let i = 0; i < skipped; i++) {
    results.push({
      ok: false,
      error: "not sent before the timeout",
      promptTokens: 0,
      outputTokens: 0,
      ttft: 0,
      itl: [],
      e2e: 0,
    });
  }
  return summarize(results, durationS);
}
