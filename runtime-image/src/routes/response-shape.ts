import type { TokenChoiceLogprob } from "../generation.js";
import { type FinishedChoice, type ResponseShape, usageBody } from "./common.js";

/** How one OpenAI API writes a choice: chat as `delta`/`message`, completions as `text`. */
export interface ChoiceFormat {
  /** A streamed chunk's fields carrying `text`. */
  delta(text: string): Record<string, unknown>;
  /** The fields of the streamed chunk that only finishes a choice. */
  finished: Record<string, unknown>;
  /** A complete (non-streamed) choice's fields carrying its whole `text`. */
  whole(text: string): Record<string, unknown>;
  logprobs(index: number, entries: TokenChoiceLogprob[] | undefined): unknown;
  /** Chunks sent before any text, built with `choiceChunk` (chat: the assistant role). */
  opening?(choiceChunk: ChoiceChunk, index: number): unknown;
}

type ChoiceChunk = (
  index: number,
  fields: Record<string, unknown>,
  logprobs: unknown,
  finishReason: string | null,
) => unknown;

/**
 * The layout both APIs share. A streamed chunk is `<chunkObject>` with one choice (index, fields,
 * logprobs, finish_reason) and `usage: null` when the client asked for a final usage chunk, as
 * OpenAI sends them; a complete response is `<completeObject>` with every choice and the usage.
 */
export function responseShape(
  head: { id: string; model: string; chunkObject: string; completeObject: string; includeUsage: boolean },
  format: ChoiceFormat,
): ResponseShape {
  const { id, model } = head;
  const created = Math.floor(Date.now() / 1000);
  const chunkHead = { id, object: head.chunkObject, created, model };
  const usageField = head.includeUsage ? { usage: null } : {};
  const choiceChunk: ChoiceChunk = (index, fields, logprobs, finishReason) => ({
    ...chunkHead,
    choices: [{ index, ...fields, logprobs, finish_reason: finishReason }],
    ...usageField,
  });
  return {
    opening: (choices) => (format.opening ? choices.map((c) => format.opening?.(choiceChunk, c.index)) : []),
    chunk: (event) =>
      event.kind === "text"
        ? choiceChunk(
            event.index,
            format.delta(event.text),
            format.logprobs(event.index, event.logprobs),
            null,
          )
        : choiceChunk(event.index, format.finished, null, event.reason),
    usageChunk: (usage) => ({ ...chunkHead, choices: [], usage: usageBody(usage) }),
    complete: (choices: FinishedChoice[], usage) => ({
      id,
      object: head.completeObject,
      created,
      model,
      choices: choices.map((c) => ({
        index: c.index,
        ...format.whole(c.text),
        logprobs: format.logprobs(c.index, c.logprobs),
        finish_reason: c.finishReason,
      })),
      usage: usageBody(usage),
    }),
  };
}
