import type {
  FinishReason,
  SamplingParams,
  TokenBatch,
  TokenLogprob,
} from "../../native/binding/engine-types.js";
import { IncrementalDetokenizer } from "./detokenizer.js";
import type { ServingMetrics } from "./metrics.js";
import type { LoadedModel } from "./model.js";
import { StopStringMatcher } from "./stop-strings.js";

export interface ChoiceSpec {
  index: number;
  promptTokens: number[];
}

export interface GenerationSpec {
  /** The HTTP request id; engine request ids derive from it. */
  requestId: string;
  choices: ChoiceSpec[];
  maxTokens: number;
  /** Sampling of one choice (choices differ in their seed). */
  sampling: (choiceIndex: number) => SamplingParams;
  stop: string[];
  /** Top alternatives per token when logprobs were asked for; undefined when they were not. */
  logprobs?: number;
  /** Aborted when the client goes away: every choice is cancelled in the engine. */
  signal: AbortSignal;
  /** performance.now() when the request arrived, for TTFT and end-to-end latency. */
  arrivedAt: number;
}

export interface TokenChoiceLogprob {
  token: number;
  text: string;
  logprob: number;
  top: { token: number; text: string; logprob: number }[];
}

export type GenerationEvent =
  | { kind: "text"; index: number; text: string; logprobs?: TokenChoiceLogprob[] }
  | { kind: "finish"; index: number; reason: "stop" | "length" };

export interface GenerationUsage {
  promptTokens: number;
  completionTokens: number;
  cachedPromptTokens: number;
}

export interface Generation {
  choices: ChoiceSpec[];
  events: AsyncIterable<GenerationEvent>;
  /** Complete once `events` has ended. */
  usage: GenerationUsage;
}

/**
 * Submits every choice to the engine at once (so an overload or limit error is thrown before any
 * response byte is sent) and merges their token streams into one stream of text events, with
 * detokenization and stop strings applied per choice.
 */
export function startGeneration(
  model: LoadedModel,
  metrics: ServingMetrics,
  spec: GenerationSpec,
): Generation {
  const usage: GenerationUsage = {
    promptTokens: spec.choices.reduce((sum, c) => sum + c.promptTokens.length, 0),
    completionTokens: 0,
    cachedPromptTokens: 0,
  };
  const streams: { id: string; choice: ChoiceSpec; iterator: AsyncIterator<TokenBatch> }[] = [];
  try {
    for (const choice of spec.choices) {
      const id = `${spec.requestId}-${choice.index}`;
      const iterable = model.engine.submit({
        id,
        promptTokens: choice.promptTokens,
        maxTokens: spec.maxTokens,
        sampling: spec.sampling(choice.index),
        ...(spec.logprobs !== undefined ? { logprobs: spec.logprobs } : {}),
      });
      streams.push({ id, choice, iterator: iterable[Symbol.asyncIterator]() });
    }
  } catch (err) {
    for (const s of streams) model.engine.cancel(s.id);
    throw err;
  }
  metrics.promptTokens.inc(usage.promptTokens);

  const channel = new Channel<GenerationEvent>();
  let firstToken = true;
  const live = new Set(streams.map((s) => s.id));
  const onAbort = () => {
    for (const id of live) model.engine.cancel(id);
  };
  spec.signal.addEventListener("abort", onAbort, { once: true });

  const pump = async (s: (typeof streams)[number]) => {
    const detok = new IncrementalDetokenizer(model.tokenizer, s.choice.promptTokens);
    const stops = new StopStringMatcher(spec.stop);
    let last = performance.now();
    let cancelledForStop = false;
    try {
      while (!spec.signal.aborted) {
        const next = await s.iterator.next();
        if (next.done) break;
        const batch = next.value;
        const now = performance.now();
        if (batch.tokens.length > 0) {
          if (firstToken) {
            firstToken = false;
            metrics.timeToFirstToken.observe((now - spec.arrivedAt) / 1000);
          } else {
            const gap = (now - last) / 1000 / batch.tokens.length;
            for (let i = 0; i < batch.tokens.length; i++) metrics.interTokenLatency.observe(gap);
          }
          last = now;
        }
        if (batch.cachedPromptTokens) usage.cachedPromptTokens += batch.cachedPromptTokens;
        usage.completionTokens += batch.tokens.length;
        metrics.generationTokens.inc(batch.tokens.length);
        const ending = batch.finishReason !== undefined && batch.finishReason !== "cancelled";
        let piece = detok.push(batch.tokens);
        if (ending) piece += detok.flush();
        let { text, stopped } = stops.push(piece);
        if (ending && !stopped) text += stops.flush();
        const logprobs = spec.logprobs !== undefined ? describeLogprobs(model, batch.logprobs) : undefined;
        if (text || logprobs?.length) {
          channel.push({ kind: "text", index: s.choice.index, text, ...(logprobs ? { logprobs } : {}) });
        }
        if (stopped) {
          cancelledForStop = true;
          channel.push({ kind: "finish", index: s.choice.index, reason: "stop" });
          break;
        }
        if (ending) {
          channel.push({ kind: "finish", index: s.choice.index, reason: finishOf(batch.finishReason) });
          break;
        }
        if (batch.finishReason === "cancelled") break;
      }
    } finally {
      live.delete(s.id);
      // An abort was already passed on to the engine by onAbort; a stop string is ours to pass on.
      if (cancelledForStop) model.engine.cancel(s.id);
      // Always end the iterator: after an early stop it is the contract's way to free the pages,
      // after the final batch it lets the stream's own clean-up run instead of waiting forever.
      await s.iterator.return?.();
    }
  };

  Promise.all(streams.map(pump)).then(
    () => {
      spec.signal.removeEventListener("abort", onAbort);
      metrics.e2eLatency.observe((performance.now() - spec.arrivedAt) / 1000);
      channel.end();
    },
    (err: unknown) => {
      spec.signal.removeEventListener("abort", onAbort);
      onAbort();
      channel.fail(err);
    },
  );
  return { choices: spec.choices, events: channel, usage };
}

function finishOf(reason: FinishReason | undefined): "stop" | "length" {
  return reason === "length" ? "length" : "stop";
}

function describeLogprobs(model: LoadedModel, logprobs: TokenLogprob[] | undefined): TokenChoiceLogprob[] {
  const text = (id: number) => model.tokenizer.tokenText(id) ?? "";
  return (logprobs ?? []).map((lp) => ({
    token: lp.token,
    text: text(lp.token),
    logprob: lp.logprob,
    top: lp.top.map((t) => ({ token: t.token, text: text(t.token), logprob: t.logprob })),
  }));
}

/** A single-consumer async queue: producers push, the HTTP handler iterates. */
class Channel<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private waiting: (() => void) | undefined;
  private ended = false;
  private error: unknown;

  push(item: T): void {
    this.items.push(item);
    this.wake();
  }

  end(): void {
    this.ended = true;
    this.wake();
  }

  fail(err: unknown): void {
    this.error = err ?? new Error("generation failed");
    this.end();
  }

  private wake(): void {
    const w = this.waiting;
    this.waiting = undefined;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      const item = this.items.shift();
      if (item !== undefined) {
        yield item;
        continue;
      }
      if (this.ended) {
        if (this.error !== undefined) throw this.error;
        return;
      }
      await new Promise<void>((resolve) => {
        this.waiting = resolve;
      });
    }
  }
}
