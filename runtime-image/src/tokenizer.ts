import { Tokenizer } from "@huggingface/tokenizers";

/** The engine's own tokenizer, built from the tokenizer.json embedded at build time. */
export interface TextTokenizer {
  /** `addSpecialTokens`: the tokenizer's post-processor (e.g. BOS) for raw prompts; chat templates add their own. */
  encode(text: string, addSpecialTokens: boolean): number[];
  /** Special tokens (BOS/EOS, chat markers) are left out of generated text. */
  decode(ids: number[]): string;
  /** The text of one token id as stored in the vocabulary (for logprobs), or undefined when unknown. */
  tokenText(id: number): string | undefined;
}

export function loadTokenizer(
  tokenizerJson: string,
  tokenizerConfig: Record<string, unknown> = {},
): TextTokenizer {
  let parsed: unknown;
  try {
    parsed = JSON.parse(tokenizerJson);
  } catch (err) {
    throw new Error(`the engine's embedded tokenizer.json is not JSON: ${(err as Error).message}`);
  }
  const tokenizer = new Tokenizer(parsed as object, tokenizerConfig);
  return {
    encode: (text, addSpecialTokens) => tokenizer.encode(text, { add_special_tokens: addSpecialTokens }).ids,
    decode: (ids) =>
      ids.length === 0
        ? ""
        : tokenizer.decode(ids, { skip_special_tokens: true, clean_up_tokenization_spaces: false }),
    tokenText: (id) => {
      // Single-token decode gives readable text for byte-level vocabularies ("Ġhello" -> " hello").
      if (tokenizer.id_to_token(id) === undefined) return undefined;
      return tokenizer.decode([id], { skip_special_tokens: false, clean_up_tokenization_spaces: false });
    },
  };
}
