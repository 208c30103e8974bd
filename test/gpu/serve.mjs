// The Node half of test/gpu/serve.sh: runs the prompts of serve.py's cases.json through the
// ServingEngine (native/binding/engine.ts, bundled by `serve.sh prepare`) on the GPU and checks
// that each request alone gives the tokens of `kiln-native generate`, that all of them at once
// (with a sampled request beside them) give the same tokens, that every page comes back, and that
// the KV cache options size the cache. Prints one JSON line per check and exits 1 on a failure.
//
// Usage: node test/gpu/serve.mjs WORK_DIR (KILN_ADDON_PATH names the CUDA build's kiln.node)
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { loadEngine } from "../../.gpu/serve/engine.mjs";

const work = process.argv[2];
const { engine: enginePath, shape, cases } = JSON.parse(readFileSync(join(work, "cases.json"), "utf8"));
let failures = 0;

function report(check, ok, details) {
  if (!ok) failures += 1;
  console.log(JSON.stringify({ shape, check, ok, ...details }));
}

async function collect(stream) {
  const tokens = [];
  let finishReason;
  for await (const batch of stream) {
    tokens.push(...batch.tokens);
    finishReason = batch.finishReason ?? finishReason;
  }
  return { tokens, finishReason };
}

// The loop stops after an eos token; generate runs its steps regardless.
function cutAtEos(tokens, eos) {
  const at = tokens.findIndex((t) => eos.includes(t));
  return at < 0 ? tokens : tokens.slice(0, at + 1);
}

function firstDiff(a, b) {
  for (let i = 0; i < Math.max(a.length, b.length); i++) if (a[i] !== b[i]) return i;
  return -1;
}

const request = (c, id = c.id) => ({ id, promptTokens: c.prompt, maxTokens: c.max_tokens });
const sampled = (id) => ({
  id,
  promptTokens: cases[2].prompt,
  maxTokens: 32,
  sampling: { temperature: 0.8, topP: 0.95, seed: 5 },
});

async function servingChecks() {
  const started = performance.now();
  const engine = await loadEngine(enginePath, { kvMemoryFraction: 0.5 });
  const loadMs = performance.now() - started;
  try {
    const kv = engine.info.kvCache;
    report(
      "loads on the GPU with the KV cache sized from free memory",
      kv?.backend === "cuda" && kv.dtype === "bf16",
      {
        kvCache: kv,
        kvGiB: kv ? +(kv.bytes / 2 ** 30).toFixed(2) : null,
        loadMs: Math.round(loadMs),
      },
    );
    const eos = engine.info.eosTokenIds;

    const alone = {};
    const aloneStart = performance.now();
    let aloneTokens = 0;
    for (const c of cases) {
      const got = await collect(engine.submit(request(c, `alone-${c.id}`)));
      alone[c.id] = got.tokens;
      aloneTokens += got.tokens.length;
      const want = cutAtEos(c.reference, eos);
      report(
        `alone ${c.id} (prompt ${c.prompt.length}) equals kiln-native generate`,
        firstDiff(got.tokens, want) < 0,
        {
          firstDiff: firstDiff(got.tokens, want),
          tokens: got.tokens.length,
        },
      );
    }
    const aloneS = (performance.now() - aloneStart) / 1000;
    const sampledAlone = await collect(engine.submit(sampled("sampled-alone")));

    const togetherStart = performance.now();
    const together = await Promise.all([
      ...cases.map((c) => collect(engine.submit(request(c)))),
      collect(engine.submit(sampled("sampled"))),
    ]);
    const togetherS = (performance.now() - togetherStart) / 1000;
    const sampledTogether = together.pop();
    let togetherTokens = sampledTogether.tokens.length;
    cases.forEach((c, i) => {
      const got = together[i].tokens;
      togetherTokens += got.length;
      report(`together ${c.id} equals alone`, firstDiff(got, alone[c.id]) < 0, {
        firstDiff: firstDiff(got, alone[c.id]),
      });
    });
    report("the sampled request beside them runs to its length", sampledTogether.tokens.length > 0, {
      tokens: sampledTogether.tokens.length,
      sameAsAlone: firstDiff(sampledTogether.tokens, sampledAlone.tokens) < 0,
    });
    const stats = engine.stats();
    report(
      "every page is back and the requests ran side by side",
      stats.pagesUsed === 0 && stats.runningPeak > 1,
      {
        pagesUsed: stats.pagesUsed,
        pagesUsedPeak: stats.pagesUsedPeak,
        pagesTotal: stats.pagesTotal,
        runningPeak: stats.runningPeak,
        steps: stats.steps,
      },
    );
    // Wall-clock throughput of this run, for the report only (not asserted).
    console.log(
      JSON.stringify({
        shape,
        throughput: {
          sequential_tok_s: +(aloneTokens / aloneS).toFixed(1),
          concurrent_tok_s: +(togetherTokens / togetherS).toFixed(1),
          concurrency: cases.length + 1,
        },
      }),
    );
  } finally {
    await engine.close();
  }
}

async function sizingChecks() {
  const explicit = await loadEngine(enginePath, { kvCachePages: 300, kvMemoryFraction: 0.5 });
  const kv = explicit.info.kvCache;
  await explicit.close();
  report("kvCachePages wins over kvMemoryFraction", kv?.pages === 300 && kv.sizedBy === "kvCachePages", {
    kvCache: kv,
  });
  const byDefault = await loadEngine(enginePath, {});
  const full = byDefault.info.kvCache;
  await byDefault.close();
  report(
    "by default 0.9 of free memory after weights and scratch",
    /^default kvMemoryFraction 0\.9 of /.test(full?.sizedBy ?? ""),
    {
      kvCache: full,
      kvGiB: full ? +(full.bytes / 2 ** 30).toFixed(2) : null,
    },
  );
  for (const bad of [0, 1.5, Number.NaN]) {
    let message = "";
    try {
      await (await loadEngine(enginePath, { kvMemoryFraction: bad })).close();
    } catch (err) {
      message = err.message;
    }
    report(`kvMemoryFraction ${bad} is refused naming the option`, message.includes("kvMemoryFraction"), {
      message,
    });
  }
}

await servingChecks();
await sizingChecks();
console.log(JSON.stringify({ shape, summary: failures === 0 ? "pass" : `${failures} failed` }));
process.exit(failures === 0 ? 0 : 1);
