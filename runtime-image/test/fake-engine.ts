import {
  type EngineInfo,
  EngineOverloadedError,
  type EngineStats,
  type GenerationRequest,
  type ServingEngine,
  type TokenBatch,
} from "../../native/binding/engine-types.js";
import { EOS_ID, TINY_CHAT_TEMPLATE, TINY_VOCAB_SIZE, tinyTokenizerJson } from "./fixtures/tokenizer.js";

interface Entry {
  cancelled: boolean;
  running: boolean;
  /** Resolves the wait of the request's stream (for admission or, in manual mode, its next token). */
  wake?: () => void;
}

function wake(entry: Entry): void {
  const resolve = entry.wake;
  entry.wake = undefined;
  resolve?.();
}

export interface FakeEngineOptions {
  /** The tokens a request produces (the fake stops at maxTokens, or after EOS with "stop"). */
  reply?: (request: GenerationRequest) => number[];
  /** Requests running at once; the rest wait. */
  maxRunning?: number;
  /** Waiting requests beyond which submit() throws EngineOverloadedError. */
  maxQueued?: number;
  /** When true, each token waits for step(); otherwise tokens flow on their own. */
  manual?: boolean;
  info?: Partial<EngineInfo>;
}

/**
 * A ServingEngine that follows the contract of engine-types.ts (ordered batches, a final batch with
 * finishReason, synchronous overload errors, cancel ends the stream) and records what it was asked.
 */
export class FakeEngine implements ServingEngine {
  readonly info: EngineInfo;
  readonly submitted: GenerationRequest[] = [];
  readonly cancelled: string[] = [];
  healthy = true;
  closed = false;
  private readonly live = new Map<string, Entry>();

  constructor(private readonly options: FakeEngineOptions = {}) {
    this.info = {
      modelName: "tiny",
      architecture: "LlamaForCausalLM",
      precision: "fp32",
      vocabSize: TINY_VOCAB_SIZE,
      maxInputLen: 64,
      maxSeqLen: 128,
      eosTokenIds: [EOS_ID],
      bosTokenId: 1,
      tokenizerJson: tinyTokenizerJson(),
      chatTemplate: TINY_CHAT_TEMPLATE,
      sha256: "ab".repeat(32),
      ...options.info,
    };
  }

  /** Lets every waiting manual-mode token through once. */
  step(): void {
    for (const e of this.live.values()) if (e.running) wake(e);
  }

  get liveRequests(): number {
    return this.live.size;
  }

  submit(request: GenerationRequest): AsyncIterable<TokenBatch> {
    if (this.closed) throw new Error("engine closed");
    if (this.stats().waiting >= (this.options.maxQueued ?? Number.POSITIVE_INFINITY)) {
      throw new EngineOverloadedError(`queue full (${this.options.maxQueued})`);
    }
    this.submitted.push(request);
    const entry: Entry = { cancelled: false, running: false };
    this.live.set(request.id, entry);
    this.admit();
    const tokens = (this.options.reply ?? (() => [72 + 3, 105 + 3, EOS_ID]))(request);
    return this.run(request, entry, tokens);
  }

  private admit(): void {
    let running = [...this.live.values()].filter((e) => e.running).length;
    for (const e of this.live.values()) {
      if (running >= (this.options.maxRunning ?? Number.POSITIVE_INFINITY)) break;
      if (!e.running) {
        e.running = true;
        running++;
        wake(e);
      }
    }
  }

  private async *run(request: GenerationRequest, entry: Entry, tokens: number[]): AsyncGenerator<TokenBatch> {
    try {
      for (let i = 0; ; i++) {
        await this.tick(entry);
        if (entry.cancelled) {
          yield { tokens: [], finishReason: "cancelled" };
          return;
        }
        const token = tokens[i % tokens.length] ?? EOS_ID;
        const isEos = this.info.eosTokenIds.includes(token);
        const atLimit = i + 1 >= request.maxTokens;
        const batch: TokenBatch = { tokens: [token] };
        if (request.logprobs !== undefined) {
          batch.logprobs = [
            {
              token,
              logprob: -0.5,
              top: Array.from({ length: request.logprobs }, (_, k) => ({ token: 3 + k, logprob: -1 - k })),
            },
          ];
        }
        if (i === 0) batch.cachedPromptTokens = 0;
        if (isEos || atLimit) batch.finishReason = isEos ? "stop" : "length";
        yield batch;
        if (batch.finishReason) return;
      }
    } finally {
      // Breaking out of the iterator frees the request, as the contract promises.
      this.live.delete(request.id);
      this.admit();
    }
  }

  private async tick(entry: Entry): Promise<void> {
    while (!entry.running && !entry.cancelled) await new Promise<void>((r) => (entry.wake = r));
    if (this.options.manual && !entry.cancelled) {
      await new Promise<void>((r) => (entry.wake = r));
    } else {
      await new Promise<void>((r) => setImmediate(r));
    }
  }

  cancel(id: string): void {
    this.cancelled.push(id);
    const entry = this.live.get(id);
    if (!entry) return;
    entry.cancelled = true;
    // Wake the request wherever it waits, so its stream ends with "cancelled" at once.
    wake(entry);
  }

  stats(): EngineStats {
    const entries = [...this.live.values()];
    const running = entries.filter((e) => e.running).length;
    return {
      running,
      waiting: entries.length - running,
      pagesUsed: entries.length,
      pagesTotal: 64,
      tokensPerSecond: 0,
      prefixCacheHitRate: 0.25,
      healthy: this.healthy,
    };
  }

  async close(): Promise<void> {
    for (const id of this.live.keys()) this.cancel(id);
    this.closed = true;
  }
}
