import { basename } from "node:path";
import type {
  EngineInfo,
  EngineLoadOptions,
  EngineStats,
  FinishReason,
  GenerationRequest,
  KvCacheInfo,
  ServingEngine,
  ServingEngineLoader,
  TokenBatch,
  TokenLogprob,
} from "./engine-types.js";
import { EngineLimitError, EngineOverloadedError } from "./engine-types.js";
import { addon } from "./index.js";

// The ServingEngine of engine-types.ts over the native serving runtime (native/binding/serving.cpp).
// The native loop thread produces every step's token events; they arrive here in one callback per
// step and are routed to the request's stream. Nothing on this side runs per token except that.

/** One request's events as the addon delivers them. */
interface NativeEvent {
  id: string;
  tokens: number[];
  logprobs?: TokenLogprob[];
  finishReason?: FinishReason;
  cachedPromptTokens?: number;
  /** The engine loop failed; the request ends with this error. */
  error?: string;
}

/** Everything stats() reports, including what the bench and tests read beyond EngineStats. */
export interface NativeEngineStats extends EngineStats {
  runningPeak: number;
  pagesCached: number;
  pagesUsedPeak: number;
  kvCacheBytes: number;
  generatedTokens: number;
  steps: number;
  preemptions: number;
}

export interface NativeServingHandle {
  info(): string;
  tokenizerJson(): string | null;
  submit(request: GenerationRequest): void;
  cancel(id: string): void;
  stats(): NativeEngineStats;
  close(): Promise<void>;
}

export interface ServingAddon {
  loadEngine(
    path: string,
    options: EngineLoadOptions,
    onEvents: (events: NativeEvent[]) => void,
  ): Promise<NativeServingHandle>;
}

interface NativeInfo {
  header: {
    model: { architecture: string; vocab_size: number };
    precision: string;
    hf_config?: { _name_or_path?: string };
    chat_template?: unknown;
  };
  sha256: string;
  limits: {
    maxInputLen: number;
    maxSeqLen: number;
    kvPageSize: number;
    kvCachePages: number;
    kvCacheBytes: number;
    kvCacheSizedBy: string;
    kvCacheDtype: KvCacheInfo["dtype"];
    backend: KvCacheInfo["backend"];
  };
  eosTokenIds: number[];
  bosTokenId?: number;
}

/** A request's token batches, buffered until the consumer pulls them. */
class RequestStream implements AsyncIterableIterator<TokenBatch> {
  private readonly queue: TokenBatch[] = [];
  private waiter:
    | { resolve: (r: IteratorResult<TokenBatch>) => void; reject: (e: Error) => void }
    | undefined;
  private failure: Error | undefined;
  done = false;

  constructor(private readonly onAbandon: () => void) {}

  push(batch: TokenBatch): void {
    if (batch.finishReason) this.done = true;
    if (this.waiter) {
      const { resolve } = this.waiter;
      this.waiter = undefined;
      resolve({ value: batch, done: false });
    } else {
      this.queue.push(batch);
    }
  }

  fail(error: Error): void {
    this.done = true;
    this.failure = error;
    if (this.waiter) {
      const { reject } = this.waiter;
      this.waiter = undefined;
      reject(error);
    }
  }

  next(): Promise<IteratorResult<TokenBatch>> {
    const batch = this.queue.shift();
    if (batch) return Promise.resolve({ value: batch, done: false });
    if (this.failure) return Promise.reject(this.failure);
    if (this.done) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => {
      this.waiter = { resolve, reject };
    });
  }

  /** Breaking out of for-await (a client disconnect) cancels the request. */
  return(): Promise<IteratorResult<TokenBatch>> {
    if (!this.done) this.onAbandon();
    this.done = true;
    this.queue.length = 0;
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}

function toBatch(e: NativeEvent): TokenBatch {
  const batch: TokenBatch = { tokens: e.tokens };
  if (e.logprobs) batch.logprobs = e.logprobs;
  if (e.finishReason) batch.finishReason = e.finishReason;
  if (e.cachedPromptTokens !== undefined) batch.cachedPromptTokens = e.cachedPromptTokens;
  return batch;
}

class NativeServingEngine implements ServingEngine {
  readonly info: EngineInfo;
  private readonly streams = new Map<string, RequestStream>();
  private handle: NativeServingHandle | undefined;

  constructor(path: string, handle: NativeServingHandle) {
    this.handle = handle;
    const raw = JSON.parse(handle.info()) as NativeInfo;
    const template = raw.header.chat_template;
    this.info = {
      modelName: raw.header.hf_config?._name_or_path || basename(path).replace(/\.kiln$/, ""),
      architecture: raw.header.model.architecture,
      precision: raw.header.precision,
      vocabSize: raw.header.model.vocab_size,
      maxInputLen: raw.limits.maxInputLen,
      maxSeqLen: raw.limits.maxSeqLen,
      eosTokenIds: raw.eosTokenIds,
      tokenizerJson: handle.tokenizerJson() ?? "",
      sha256: raw.sha256,
      kvCache: {
        backend: raw.limits.backend,
        pages: raw.limits.kvCachePages,
        pageSize: raw.limits.kvPageSize,
        bytes: raw.limits.kvCacheBytes,
        dtype: raw.limits.kvCacheDtype,
        sizedBy: raw.limits.kvCacheSizedBy,
      },
      ...(raw.bosTokenId !== undefined ? { bosTokenId: raw.bosTokenId } : {}),
      ...(typeof template === "string" ? { chatTemplate: template } : {}),
    };
  }

  /** Called by the addon once per engine step with that step's events. */
  deliver(events: NativeEvent[]): void {
    for (const e of events) {
      const stream = this.streams.get(e.id);
      if (e.finishReason || e.error !== undefined) this.streams.delete(e.id);
      if (!stream) continue;
      if (e.error !== undefined) stream.fail(new Error(`request ${e.id}: ${e.error}`));
      else stream.push(toBatch(e));
    }
  }

  submit(request: GenerationRequest): AsyncIterable<TokenBatch> {
    const handle = this.open();
    if (this.streams.has(request.id)) throw new Error(`request ${request.id}: the id is already in flight`);
    try {
      handle.submit(request);
    } catch (err) {
      const e = err as Error & { code?: string; field?: "promptTokens" | "maxTokens" };
      if (e.code === "KILN_OVERLOADED") throw new EngineOverloadedError(e.message);
      if (e.code === "KILN_LIMIT") throw new EngineLimitError(e.message, e.field ?? "promptTokens");
      throw e;
    }
    const stream = new RequestStream(() => this.cancel(request.id));
    this.streams.set(request.id, stream);
    return stream;
  }

  cancel(id: string): void {
    this.handle?.cancel(id);
  }

  stats(): NativeEngineStats {
    return this.open().stats();
  }

  async close(): Promise<void> {
    const handle = this.handle;
    if (!handle) return;
    await handle.close();
    this.handle = undefined;
    // The loop delivered a cancelled batch for everything in flight; end any stream it could not reach.
    for (const stream of this.streams.values()) stream.push({ tokens: [], finishReason: "cancelled" });
    this.streams.clear();
  }

  private open(): NativeServingHandle {
    if (!this.handle) throw new Error("the engine is closed");
    return this.handle;
  }
}

/**
 * Loads an engine file (checksums and target fingerprint verified, sha256 computed; with
 * `options.verifiedSha256` the section checksums and the hash are skipped and that digest reported)
 * on a worker thread and starts its serving loop on a native thread.
 */
export const loadEngine: ServingEngineLoader = async (path, options = {}) => {
  // Events exist only for submitted requests, so none can arrive before the engine object does.
  let engine: NativeServingEngine | undefined;
  const handle = await (addon() as unknown as ServingAddon).loadEngine(path, options, (events) =>
    engine?.deliver(events),
  );
  engine = new NativeServingEngine(path, handle);
  return engine;
};

/**
 * The target fingerprint of this machine, as engines record it: the GPU's CUDA target where the
 * addon has the CUDA backend and a GPU is visible (a GPU pod serves engines built for its GPU),
 * else the CPU's (`cpu:<arch>:<isa>`).
 */
export function targetFingerprint(): string {
  const native = addon() as unknown as {
    targetFingerprint: string;
    cudaTargetFingerprint?: () => string | null;
  };
  return native.cudaTargetFingerprint?.() ?? native.targetFingerprint;
}
