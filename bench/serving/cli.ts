// Serving benchmark for any OpenAI-compatible endpoint (Kiln or a peer such as vLLM):
//   npx tsx bench/serving/cli.ts --base-url http://127.0.0.1:8000/v1 --num-prompts 200 \
//     --input-len 512 --output-len 128 --request-rate 8      (or --concurrency 32)
// Prints one table: request/s, output tok/s, TTFT / TPOT / ITL / E2E mean, p50, p90, p99.
// Bounded by design: a fixed request count and a --timeout-s for the whole run; loopback only
// unless --allow-remote is given, so it is never aimed at someone else's server by accident.
import { parseArgs } from "node:util";
import { runBenchmark } from "./bench.js";
import { formatTable } from "./stats.js";
import { datasetPrompts, randomPrompts } from "./workload.js";

const LOOPBACK = new Set(["127.0.0.1", "localhost", "::1", "[::1]"]);

export async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      "base-url": { type: "string", default: "http://127.0.0.1:8000/v1" },
      api: { type: "string", default: "completions" },
      model: { type: "string" },
      dataset: { type: "string" },
      "num-prompts": { type: "string", default: "100" },
      "input-len": { type: "string", default: "128" },
      "output-len": { type: "string", default: "128" },
      "request-rate": { type: "string", default: "inf" },
      concurrency: { type: "string", default: "16" },
      seed: { type: "string", default: "0" },
      "timeout-s": { type: "string", default: "600" },
      "allow-remote": { type: "boolean", default: false },
    },
  });
  const int = (name: keyof typeof values, min: number) => {
    const n = Number(values[name]);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}`);
    return n;
  };
  const baseUrl = String(values["base-url"]).replace(/\/+$/, "");
  const host = new URL(baseUrl).hostname;
  if (!LOOPBACK.has(host) && !values["allow-remote"]) {
    throw new Error(
      `--base-url ${baseUrl} is not loopback; pass --allow-remote to benchmark a remote server`,
    );
  }
  const api = values.api;
  if (api !== "completions" && api !== "chat") throw new Error("--api must be completions or chat");
  const rate = values["request-rate"] === "inf" ? Number.POSITIVE_INFINITY : Number(values["request-rate"]);
  if (!(rate > 0)) throw new Error("--request-rate must be a positive number or inf");
  const count = int("num-prompts", 1);
  const outputLen = int("output-len", 1);
  const seed = int("seed", 0);
  const prompts = values.dataset
    ? await datasetPrompts(values.dataset, count, outputLen)
    : randomPrompts(count, int("input-len", 1), outputLen, seed);
  const summary = await runBenchmark({
    baseUrl,
    api,
    ...(values.model ? { model: values.model } : {}),
    prompts,
    requestRate: rate,
    concurrency: int("concurrency", 1),
    seed,
    timeoutS: int("timeout-s", 1),
  });
  const load = Number.isFinite(rate) ? `${rate} req/s Poisson` : "all at once";
  process.stdout.write(
    `${formatTable(summary, `serving benchmark: ${baseUrl} (${api}), ${count} prompts, ${load}, concurrency ${values.concurrency}`)}\n`,
  );
  return summary.failed === 0 ? 0 : 1;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: Error) => {
      process.stderr.write(`serving benchmark: ${err.message}\n`);
      process.exit(2);
    },
  );
}
