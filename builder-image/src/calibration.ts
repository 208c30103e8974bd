import { existsSync } from "node:fs";
import { readFile, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Tokenizer } from "@huggingface/tokenizers";
import { DEFAULT_CALIBRATION_DATASET } from "../../lib/manifest.js";
import { PermanentError } from "./errors.js";

const BUILTIN_DIR = join(dirname(fileURLToPath(import.meta.url)), "..", "calibration");
const DEFAULT_SAMPLES = 512;
// Activation ranges settle within a few hundred tokens; longer samples only slow calibration.
const MAX_SAMPLE_TOKENS = 512;

/** Calibration text: blank-line separated samples from a shipped set or a file on a mounted path. */
async function readSamples(dataset: string, pvcRoot: string): Promise<string[]> {
  let path: string;
  if (dataset.startsWith("builtin:")) {
    path = join(BUILTIN_DIR, `${dataset.slice("builtin:".length)}.txt`);
    if (!existsSync(path))
      throw new PermanentError(`engine.calibration.dataset ${dataset}: no such built-in set`);
  } else if (dataset.startsWith("pvc://")) {
    path = join(pvcRoot, dataset.slice("pvc://".length));
    if (!existsSync(path))
      throw new PermanentError(`engine.calibration.dataset ${dataset}: ${path} does not exist`);
  } else {
    throw new PermanentError(
      `engine.calibration.dataset ${dataset}: expected builtin:<name> or pvc://<claim>/<file>`,
    );
  }
  const samples = (await readFile(path, "utf8"))
    .split(/\n\s*\n/)
    .map((s) => s.trim())
    .filter(Boolean);
  if (!samples.length)
    throw new PermanentError(`engine.calibration.dataset ${dataset}: no samples in ${path}`);
  return samples;
}

/**
 * Tokenizes the calibration set with the checkpoint's own tokenizer and writes the JSONL of token
 * ids the compiler reads (the native side has no tokenizer). Returns the file and sample count.
 */
export async function prepareCalibration(opts: {
  modelDir: string;
  dataset?: string;
  samples?: number;
  maxInputLen: number;
  pvcRoot: string;
  out: string;
}): Promise<{ path: string; samples: number; tokens: number }> {
  const dataset = opts.dataset ?? DEFAULT_CALIBRATION_DATASET;
  const tokenizerPath = join(opts.modelDir, "tokenizer.json");
  if (!existsSync(tokenizerPath)) {
    throw new PermanentError(
      `fp8 calibration needs the checkpoint's tokenizer.json to tokenize ${dataset}; ${opts.modelDir} has none`,
    );
  }
  const configPath = join(opts.modelDir, "tokenizer_config.json");
  const tokenizer = new Tokenizer(
    JSON.parse(await readFile(tokenizerPath, "utf8")),
    existsSync(configPath) ? JSON.parse(await readFile(configPath, "utf8")) : {},
  );
  const texts = (await readSamples(dataset, opts.pvcRoot)).slice(0, opts.samples ?? DEFAULT_SAMPLES);
  const limit = Math.min(opts.maxInputLen, MAX_SAMPLE_TOKENS);
  const lines: string[] = [];
  let tokens = 0;
  for (const text of texts) {
    const ids = tokenizer.encode(text).ids.slice(0, limit);
    if (!ids.length) continue;
    tokens += ids.length;
    lines.push(JSON.stringify(ids));
  }
  await writeFile(opts.out, `${lines.join("\n")}\n`);
  return { path: opts.out, samples: lines.length, tokens };
}
