import type { TextTokenizer } from "./tokenizer.js";

// Tokens kept as left context when decoding: enough for decoders that strip or add a leading space
// depending on what precedes a token (SentencePiece "▁"), small enough to keep decoding cheap.
const CONTEXT_TOKENS = 6;
const REPLACEMENT = "\uFFFD";

/**
 * Turns a stream of token ids into a stream of text without ever emitting half a character: a
 * multi-byte UTF-8 character split over several byte tokens decodes to U+FFFD until its last byte
 * arrives, so text ending in U+FFFD is held back. Each step decodes only a short window of tokens.
 */
export class IncrementalDetokenizer {
  private readonly ids: number[];
  /** Start of the window decoded for context. */
  private prefixOffset: number;
  /** Tokens before this offset have been emitted as text. */
  private readOffset: number;

  /** `context`: the prompt's tail, so the first generated token is decoded as it follows the prompt. */
  constructor(
    private readonly tokenizer: TextTokenizer,
    context: number[] = [],
  ) {
    this.ids = context.slice(-CONTEXT_TOKENS);
    this.prefixOffset = 0;
    this.readOffset = this.ids.length;
  }

  /** Appends tokens; returns the text that is now complete (possibly ""). */
  push(tokens: number[]): string {
    this.ids.push(...tokens);
    return this.decodeReady(false);
  }

  /** Everything still held back, at the end of the stream (an incomplete character becomes U+FFFD). */
  flush(): string {
    return this.decodeReady(true);
  }

  private decodeReady(final: boolean): string {
    if (this.readOffset >= this.ids.length) return "";
    const prefixText = this.tokenizer.decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const fullText = this.tokenizer.decode(this.ids.slice(this.prefixOffset));
    if (!final && (fullText.length <= prefixText.length || fullText.endsWith(REPLACEMENT))) return "";
    const text = fullText.slice(prefixText.length);
    this.prefixOffset = Math.max(this.readOffset, this.ids.length - CONTEXT_TOKENS);
    this.readOffset = this.ids.length;
    // Keep the window short: drop ids that can no longer be part of any decode.
    if (this.prefixOffset > CONTEXT_TOKENS * 4) {
      this.ids.splice(0, this.prefixOffset);
      this.readOffset -= this.prefixOffset;
      this.prefixOffset = 0;
    }
    return text;
  }
}
