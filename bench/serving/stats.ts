import type { RequestResult } from "./client.js";

/** The q-th percentile (0..100) by linear interpolation between closest ranks, as numpy does. */
export function percentile(values: number[], q: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = (q / 100) * (sorted.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  const a = sorted[lo] ?? Number.NaN;
  const b = sorted[hi] ?? Number.NaN;
  return a + (b - a) * (rank - lo);
}

export interface Summary {
  completed: number;
  failed: number;
  durationS: number;
  requestsPerS: number;
  outputTokensPerS: number;
  totalTokensPerS: number;
  promptTokens: number;
  outputTokens: number;
  /** Milliseconds: mean, p50, p90, p99 of each latency. */
  latencies: Record<"TTFT" | "TPOT" | "ITL" | "E2E", { mean: number; p50: number; p90: number; p99: number }>;
  errors: string[];
}

function describe(values: number[]) {
  const ms = values.map((v) => v * 1000);
  const mean = ms.length ? ms.reduce((a, b) => a + b, 0) / ms.length : Number.NaN;
  return { mean, p50: percentile(ms, 50), p90: percentile(ms, 90), p99: percentile(ms, 99) };
}

export function summarize(results: RequestResult[], durationS: number): Summary {
  const ok = results.filter((r) => r.ok);
  const promptTokens = ok.reduce((s, r) => s + r.promptTokens, 0);
  const outputTokens = ok.reduce((s, r) => s + r.outputTokens, 0);
  // TPOT: time per output token after the first, per request.
  const tpot = ok.filter((r) => r.outputTokens > 1).map((r) => (r.e2e - r.ttft) / (r.outputTokens - 1));
  return {
    completed: ok.length,
    failed: results.length - ok.length,
    durationS,
    requestsPerS: ok.length / durationS,
    outputTokensPerS: outputTokens / durationS,
    totalTokensPerS: (promptTokens + outputTokens) / durationS,
    promptTokens,
    outputTokens,
    latencies: {
      TTFT: describe(ok.map((r) => r.ttft)),
      TPOT: describe(tpot),
      ITL: describe(ok.flatMap((r) => r.itl)),
      E2E: describe(ok.map((r) => r.e2e)),
    },
    errors: [...new Set(results.filter((r) => !r.ok).map((r) => r.error ?? "unknown"))].slice(0, 5),
  };
}

/** The one table the benchmark prints. */
export function formatTable(s: Summary, title: string): string {
  const n = (v: number, digits = 2) => (Number.isFinite(v) ? v.toFixed(digits) : "-");
  const lines = [
    `== ${title} ==`,
    `requests completed / failed      ${s.completed} / ${s.failed}`,
    `duration (s)                     ${n(s.durationS)}`,
    `request throughput (req/s)       ${n(s.requestsPerS)}`,
    `output token throughput (tok/s)  ${n(s.outputTokensPerS)}`,
    `total token throughput (tok/s)   ${n(s.totalTokensPerS)}`,
    `prompt / output tokens           ${s.promptTokens} / ${s.outputTokens}`,
    "",
    "latency (ms)      mean       p50       p90       p99",
  ];
  for (const [name, l] of Object.entries(s.latencies)) {
    lines.push(`${name.padEnd(12)}${[l.mean, l.p50, l.p90, l.p99].map((v) => n(v).padStart(10)).join("")}`);
  }
  for (const e of s.errors) lines.push(`error: ${e}`);
  return lines.join("\n");
}
