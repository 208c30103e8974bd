import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { parse } from "yaml";
import {
  TINY_CHAT_TEMPLATE,
  TINY_VOCAB_SIZE,
  tinyTokenizerJson,
} from "../../runtime-image/test/fixtures/tokenizer.js";
import { writeTinyLlama } from "../fixtures/tiny-checkpoint.js";
import { repoRoot } from "../pod-runner/images.js";

// The model the pipeline tier and the demo serve: a tiny random Llama with a real byte-level BPE
// tokenizer and a chat template, so text goes in and text comes out. No registry package ships
// weights small enough to build and serve on a 2-core machine in seconds, so the repo makes one.

/** Claim and path under the pod runner's claims folder: the model's source is pvc://<claim>/<path>. */
export const TINY_MODEL_CLAIM = "models";
export const TINY_MODEL_PATH = "tiny-llama";
export const TINY_MODEL_SOURCE = `pvc://${TINY_MODEL_CLAIM}/${TINY_MODEL_PATH}`;

/** Writes config.json, model.safetensors, tokenizer.json and tokenizer_config.json. */
export async function writeTinyModel(claimsDir: string): Promise<string> {
  const dir = join(claimsDir, TINY_MODEL_CLAIM, TINY_MODEL_PATH);
  await writeTinyLlama(dir, { vocab: TINY_VOCAB_SIZE });
  await writeFile(join(dir, "tokenizer.json"), tinyTokenizerJson());
  await writeFile(
    join(dir, "tokenizer_config.json"),
    JSON.stringify({ bos_token: "<s>", eos_token: "</s>", chat_template: TINY_CHAT_TEMPLATE }),
  );
  return dir;
}

/** examples/tiny-llama.yaml (what the demo applies), renamed into `namespace`. */
export async function tinyInferenceModel(name: string, namespace: string) {
  const doc = parse(await readFile(join(repoRoot, "examples/tiny-llama.yaml"), "utf8")) as {
    metadata: Record<string, unknown>;
    spec: { model: { source: string }; gpu: { products: string[] } };
  };
  if (doc.spec.model.source !== TINY_MODEL_SOURCE) {
    throw new Error(`examples/tiny-llama.yaml must read ${TINY_MODEL_SOURCE}, which the fixture writes`);
  }
  return { ...doc, metadata: { ...doc.metadata, name, namespace } };
}
