import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, renameSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { loadEngine } from "../../native/binding/engine.js";
import type { ServingEngine, TokenBatch } from "../../native/binding/engine-types.js";
import { build } from "../../native/binding/index.js";
import { checkpoints, outDir, parityDir, run, venvPython } from "./harness.js";

// The serving runtime against transformers: for every parity checkpoint, 32 requests of different
// lengths submitted at once (in-flight batching, chunked prefill under a small token budget) must
// produce exactly transformers' greedy tokens, each cut after the engine's first eos as the
// runtime stops there. The reference comes from batched_reference.py in one run.

interface Reference {
  prompts: number[][];
  max_tokens: number[];
  tokens: number[][];
  min_margin: number[];
}

let references: Record<string, Reference>;
const ckDir = join(outDir, "checkpoints");

beforeAll(async () => {
  const python = venvPython();
  const made = await run(python, [join(parityDir, "make_checkpoints.py"), ckDir]);
  if (made.code !== 0) throw new Error(`make_checkpoints.py failed:\n${made.stderr.slice(-3000)}`);
  // The reference is deterministic in the manifest (seeded checkpoints) and the helper, and slow on
  // a busy machine, so it is kept under a key of both.
  const helper = join(parityDir, "batched_reference.py");
  const key = createHash("sha256")
    .update(readFileSync(join(ckDir, "manifest.json")))
    .update(readFileSync(helper))
    .digest("hex")
    .slice(0, 16);
  const out = join(outDir, `batched-reference-${key}.json`);
  if (!existsSync(out)) {
    const ref = await run(python, [
      helper,
      "--checkpoints",
      join(ckDir, "manifest.json"),
      "--out",
      `${out}.tmp`,
    ]);
    if (ref.code !== 0) throw new Error(`batched_reference.py failed:\n${ref.stderr.slice(-3000)}`);
    renameSync(`${out}.tmp`, out);
  }
  references = JSON.parse(readFileSync(out, "utf8")) as Record<string, Reference>;
});

async function tokensOf(stream: AsyncIterable<TokenBatch>): Promise<number[]> {
  const tokens: number[] = [];
  for await (const b of stream) tokens.push(...b.tokens);
  return tokens;
}

function cutAfterEos(tokens: number[], eos: number[]): number[] {
  const at = tokens.findIndex((t) => eos.includes(t));
  return at < 0 ? tokens : tokens.slice(0, at + 1);
}

describe.each(checkpoints)("$name ($arch)", ({ name }) => {
  let engine: ServingEngine | undefined;
  afterAll(async () => {
    await engine?.close();
  });

  test("32 concurrent greedy requests through the batched runtime give transformers' tokens", async () => {
    const ref = references[name];
    if (!ref) throw new Error(`no reference for ${name}`);
    mkdirSync(join(outDir, "batched"), { recursive: true });
    const enginePath = join(outDir, "batched", `${name}.fp32.kiln`);
    await build({
      modelDir: join(ckDir, name),
      outPath: enginePath,
      precision: "fp32",
      maxSeqLen: 128,
      maxBatch: 32,
      autotune: false,
      threads: 2,
    });
    const loaded = await loadEngine(enginePath, { maxBatchSize: 32, maxNumBatchedTokens: 96, threads: 2 });
    engine = loaded;
    const got = await Promise.all(
      ref.prompts.map((promptTokens, i) =>
        tokensOf(loaded.submit({ id: `${name}-${i}`, promptTokens, maxTokens: ref.max_tokens[i] ?? 1 })),
      ),
    );
    const want = ref.tokens.map((t) => cutAfterEos(t, loaded.info.eosTokenIds));
    const mismatches = got
      .map((tokens, i) => ({ i, tokens, want: want[i], margin: ref.min_margin[i] }))
      .filter((m) => JSON.stringify(m.tokens) !== JSON.stringify(m.want));
    expect(mismatches, `requests differing from transformers (margin = smallest top-1/top-2 gap)`).toEqual(
      [],
    );
  });
});
