import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, test, vi } from "vitest";
import { type TestRuntime, testRuntime } from "../../runtime-image/test/harness.js";
import { runBenchmark } from "./bench.js";
import { main } from "./cli.js";
import { formatTable, percentile, summarize } from "./stats.js";
import { poissonArrivals, randomPrompts } from "./workload.js";

describe("serving benchmark pieces", () => {
  test("percentiles interpolate between ranks like numpy", () => {
    expect(percentile([1, 2, 3, 4], 50)).toBe(2.5);
    expect(percentile([5], 99)).toBe(5);
    expect(percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90)).toBeCloseTo(9.1);
  });

  test("Poisson arrivals are reproducible per seed and average 1/rate apart", () => {
    const a = poissonArrivals(2000, 10, 1);
    expect(a).toEqual(poissonArrivals(2000, 10, 1));
    expect((a.at(-1) ?? 0) / a.length).toBeCloseTo(0.1, 1);
    expect(poissonArrivals(3, Number.POSITIVE_INFINITY, 1)).toEqual([0, 0, 0]);
  });

  test("random prompts have the asked number of words", () => {
    const [p] = randomPrompts(1, 50, 8, 3);
    expect(p?.prompt.split(" ")).toHaveLength(50);
    expect(p?.outputLen).toBe(8);
  });

  test("TPOT excludes the first token; failed requests are counted, not averaged", () => {
    const s = summarize(
      [
        { ok: true, promptTokens: 4, outputTokens: 5, ttft: 0.1, itl: [0.05], e2e: 0.5 },
        { ok: false, error: "HTTP 429", promptTokens: 0, outputTokens: 0, ttft: 0, itl: [], e2e: 0 },
      ],
      1,
    );
    expect(s.latencies.TPOT.mean).toBeCloseTo(100);
    expect(s.failed).toBe(1);
    expect(s.errors).toEqual(["HTTP 429"]);
    expect(formatTable(s, "t")).toMatch(/TPOT\s+100\.00/);
  });
});

describe("serving benchmark against a Kiln server on loopback", () => {
  let runtime: TestRuntime;
  let baseUrl: string;
  beforeAll(async () => {
    runtime = await testRuntime({ reply: () => [75, 108, 76, 109, 77] });
    await runtime.app.listen({ host: "127.0.0.1", port: 0 });
    baseUrl = `http://127.0.0.1:${(runtime.app.server.address() as AddressInfo).port}/v1`;
  });
  afterAll(async () => {
    await runtime.app.close();
  });

  test("a fixed request count at fixed concurrency completes every request and measures each latency", async () => {
    const summary = await runBenchmark({
      baseUrl,
      api: "chat",
      prompts: randomPrompts(24, 8, 6, 0),
      requestRate: Number.POSITIVE_INFINITY,
      concurrency: 4,
      seed: 0,
      timeoutS: 60,
    });
    expect(summary.completed).toBe(24);
    expect(summary.failed).toBe(0);
    expect(summary.outputTokens).toBe(24 * 6);
    for (const l of Object.values(summary.latencies)) expect(l.p50).toBeGreaterThan(0);
    expect(runtime.engine.liveRequests).toBe(0);
  });

  test("the CLI prints its table (Poisson arrivals, completions API) and exits 0", async () => {
    const out = vi.spyOn(process.stdout, "write").mockImplementation(() => true);
    try {
      const code = await main([
        "--base-url",
        baseUrl,
        "--num-prompts",
        "12",
        "--input-len",
        "8",
        "--output-len",
        "4",
        "--request-rate",
        "200",
        "--concurrency",
        "8",
      ]);
      expect(code).toBe(0);
      const table = String(out.mock.calls.at(-1)?.[0]);
      expect(table).toMatch(/requests completed \/ failed\s+12 \/ 0/);
      for (const row of ["request throughput", "output token throughput", "TTFT", "TPOT", "ITL", "E2E"]) {
        expect(table).toContain(row);
      }
    } finally {
      out.mockRestore();
    }
  });

  test("a remote endpoint is refused unless --allow-remote is given", async () => {
    await expect(main(["--base-url", "http://10.0.0.1:8000/v1"])).rejects.toThrow(
      /not loopback; pass --allow-remote/,
    );
  });
});
