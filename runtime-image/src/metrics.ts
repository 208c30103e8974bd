import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { EngineStats } from "../../native/binding/engine-types.js";

// Buckets span a tiny CPU engine's milliseconds to a long GPU generation's minutes.
const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
const TOKEN_GAP_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.5];

/** The serving metrics of one runtime; engine gauges are read from stats() at scrape time. */
export class ServingMetrics {
  readonly registry = new Registry();
  readonly requests: Counter<"route" | "status">;
  readonly timeToFirstToken: Histogram;
  readonly interTokenLatency: Histogram;
  readonly e2eLatency: Histogram;
  readonly promptTokens: Counter;
  readonly generationTokens: Counter;

  constructor(stats: () => EngineStats | undefined) {
    const registers = [this.registry];
    this.requests = new Counter({
      name: "kiln_requests_total",
      help: "HTTP requests to the API by route and response status",
      labelNames: ["route", "status"],
      registers,
    });
    this.timeToFirstToken = new Histogram({
      name: "kiln_time_to_first_token_seconds",
      help: "Time from request arrival to its first generated token",
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.interTokenLatency = new Histogram({
      name: "kiln_inter_token_latency_seconds",
      help: "Time between consecutive generated tokens of one sequence",
      buckets: TOKEN_GAP_BUCKETS,
      registers,
    });
    this.e2eLatency = new Histogram({
      name: "kiln_e2e_request_latency_seconds",
      help: "Time from request arrival to its last generated token",
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.promptTokens = new Counter({
      name: "kiln_prompt_tokens_total",
      help: "Prompt tokens of admitted requests",
      registers,
    });
    this.generationTokens = new Counter({
      name: "kiln_generation_tokens_total",
      help: "Tokens generated",
      registers,
    });
    const engineGauge = (name: string, help: string, read: (s: EngineStats) => number) =>
      new Gauge({
        name,
        help,
        registers,
        collect() {
          const s = stats();
          if (s) this.set(read(s));
        },
      });
    engineGauge(
      "kiln_queue_depth",
      "Requests waiting for admission into the running batch",
      (s) => s.waiting,
    );
    engineGauge("kiln_running_batch_size", "Sequences in the engine's running batch", (s) => s.running);
    engineGauge("kiln_kv_pages_used", "KV cache pages in use", (s) => s.pagesUsed);
    engineGauge("kiln_kv_pages_total", "KV cache pages allocated", (s) => s.pagesTotal);
    engineGauge(
      "kiln_prefix_cache_hit_rate",
      "Share of prompt tokens served from the prefix cache",
      (s) => s.prefixCacheHitRate,
    );
    engineGauge(
      "kiln_generation_tokens_per_second",
      "Tokens the engine generated per second over the last few seconds",
      (s) => s.tokensPerSecond,
    );
    engineGauge("kiln_engine_healthy", "1 while the engine loop is alive", (s) => (s.healthy ? 1 : 0));
  }
}
