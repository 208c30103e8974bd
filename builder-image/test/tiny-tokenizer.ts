import { writeFile } from "node:fs/promises";
import { join } from "node:path";

/**
 * A word-level tokenizer.json over a small vocabulary (ids below the tiny model's vocab size), so
 * fp8 calibration can tokenize real text for a random checkpoint.
 */
export async function writeTinyTokenizer(modelDir: string, vocabSize: number): Promise<void> {
  const words = ["[UNK]", "the", "a", "of", "and", "to", "in", "is", "was", "for", "on", "with", "at", "by"];
  const vocab: Record<string, number> = {};
  words.slice(0, vocabSize).forEach((w, i) => {
    vocab[w] = i;
  });
  const tokenizer = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [],
    normalizer: { type: "Lowercase" },
    pre_tokenizer: { type: "Whitespace" },
    post_processor: null,
    decoder: null,
    model: { type: "WordLevel", vocab, unk_token: "[UNK]" },
  };
  await writeFile(join(modelDir, "tokenizer.json"), JSON.stringify(tokenizer));
  await writeFile(join(modelDir, "tokenizer_config.json"), JSON.stringify({ unk_token: "[UNK]" }));
}
