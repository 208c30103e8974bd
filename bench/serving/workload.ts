import { readFile } from "node:fs/promises";
import { seededRandom } from "../../test/fixtures/seeded-random.js";

// Common short English words: about one token each in every mainstream vocabulary, so a prompt of
// N words is close to N tokens whatever the server's tokenizer (the server's usage gives the truth).
const WORDS =
  "the of and to in is it you that was for on are with as his they be at one have this from or had by word but what some we can out other were all there when up use your how said an each she which do their time if will way about many then them write would like so these her long make thing see him two has look more day could go come did number sound no most people my over know water than call first who may down side been now find".split(
    " ",
  );

export interface BenchPrompt {
  prompt: string;
  /** Tokens to ask for (max_tokens). */
  outputLen: number;
}

/** `count` prompts of about `inputLen` tokens of random words; the seed makes them reproducible. */
export function randomPrompts(
  count: number,
  inputLen: number,
  outputLen: number,
  seed: number,
): BenchPrompt[] {
  const random = seededRandom(seed);
  return Array.from({ length: count }, () => ({
    prompt: Array.from({ length: inputLen }, () => WORDS[Math.floor(random() * WORDS.length)]).join(" "),
    outputLen,
  }));
}

/**
 * Prompts from a JSONL file, one `{"prompt": "..."}` (optionally `"output_len"`) per line, cycled
 * to `count`.
 */
export async function datasetPrompts(path: string, count: number, outputLen: number): Promise<BenchPrompt[]> {
  const rows = (await readFile(path, "utf8"))
    .split("\n")
    .filter((line) => line.trim() !== "")
    .map((line, i) => {
      const row = JSON.parse(line) as { prompt?: unknown; output_len?: unknown };
      if (typeof row.prompt !== "string") throw new Error(`${path}:${i + 1}: "prompt" must be a string`);
      return {
        prompt: row.prompt,
        outputLen: typeof row.output_len === "number" ? row.output_len : outputLen,
      };
    });
  if (rows.length === 0) throw new Error(`${path}: no prompts`);
  return Array.from({ length: count }, (_, i) => rows[i % rows.length] as BenchPrompt);
}

/**
 * Start offsets (seconds from the start) of `count` requests arriving as a Poisson process of
 * `rate` requests/s; all at 0 when the rate is infinite (concurrency alone then bounds the load).
 */
export function poissonArrivals(count: number, rate: number, seed: number): number[] {
  if (!Number.isFinite(rate)) return new Array(count).fill(0);
  const random = seededRandom(seed ^ 0x9e3779b9);
  let t = 0;
  return Array.from({ length: count }, () => {
    t += -Math.log(1 - random()) / rate;
    return t;
  });
}
