// The serving contract between the native runtime (paged KV cache, in-flight batching, sampling on
// its own thread) and the runtime image's HTTP layer. The native side implements it in engine.ts;
// the HTTP layer depends only on these types, so it can be unit-tested with a fake engine.

export interface EngineLoadOptions {
  /** Most sequences decoded in one step. Default: the engine's maxBatch. */
  maxBatchSize?: number;
  /** Token budget of one step (decode tokens + prefill chunk tokens). Default: 2048. */
  maxNumBatchedTokens?: number;
  /** KV pages to allocate; wins over kvCacheBytes and kvMemoryFraction. */
  kvCachePages?: number;
  /** KV cache size in bytes (rounded down to whole pages); wins over kvMemoryFraction. */
  kvCacheBytes?: number;
  /**
   * Share, in (0, 1], of the memory the backend has left for the KV cache: on the GPU the free
   * device memory after weights and scratch (default 0.9); on the CPU host memory less the engine
   * file, capped at room for maxBatchSize sequences of maxSeqLen (the default).
   */
  kvMemoryFraction?: number;
  /** Requests allowed to wait for admission; beyond this submit() throws EngineOverloadedError. */
  maxQueuedRequests?: number;
  threads?: number;
  /** Positions per KV page. Default: 16. */
  kvPageSize?: number;
  /**
   * KV cache element type (compute stays fp32). Default: the backend's, fp32 on the CPU and bf16 on
   * CUDA. bf16 halves the fp32 cache; fp8 (E4M3) halves it again and is CUDA only. The loader
   * refuses a type the backend has no cache for, naming the option.
   */
  kvCacheDtype?: "fp32" | "bf16" | "fp8";
  /** Longest prompt accepted. Default: the engine's maxSeqLen - 1. */
  maxInputLen?: number;
  /**
   * The file's sha256 as the caller has just verified it (64 lowercase hex digits; the runtime checks
   * every download against the deployment's digest). The loader then skips its own checks of the
   * bytes, the sections' digests and the file's hash, which would read the whole file twice more,
   * and reports this as the engine's sha256. Without it the loader verifies every section and
   * hashes the file itself.
   */
  verifiedSha256?: string;
}

export interface SamplingParams {
  /** 0 = greedy. */
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  /** Reproducible sampling per request. */
  seed?: number;
  repetitionPenalty?: number;
  frequencyPenalty?: number;
  presencePenalty?: number;
}

export interface GenerationRequest {
  /** Caller-chosen, unique among live requests; used by cancel(). */
  id: string;
  promptTokens: number[];
  maxTokens: number;
  sampling?: SamplingParams;
  /** Generation stops after emitting one of these (the eos ids of the engine are always included). */
  stopTokenIds?: number[];
  /** Return the chosen token's logprob and this many top alternatives (0 = chosen only). */
  logprobs?: number;
}

export interface TokenLogprob {
  token: number;
  logprob: number;
  top: { token: number; logprob: number }[];
}

export type FinishReason = "stop" | "length" | "cancelled";

/** Tokens produced for one request since its previous batch (usually one per engine step). */
export interface TokenBatch {
  tokens: number[];
  logprobs?: TokenLogprob[];
  /** Set on the last batch of a request. */
  finishReason?: FinishReason;
  /** Prompt tokens served from the prefix cache (set on the first batch). */
  cachedPromptTokens?: number;
}

export interface EngineStats {
  running: number;
  waiting: number;
  pagesUsed: number;
  pagesTotal: number;
  /** Generated tokens per second over the last few seconds. */
  tokensPerSecond: number;
  prefixCacheHitRate: number;
  /** False once the engine loop has died; /healthz reports it. */
  healthy: boolean;
}

export interface EngineInfo {
  modelName: string;
  architecture: string;
  precision: string;
  vocabSize: number;
  maxInputLen: number;
  maxSeqLen: number;
  eosTokenIds: number[];
  bosTokenId?: number;
  /** tokenizer.json as embedded at build time. */
  tokenizerJson: string;
  chatTemplate?: string;
  /** Engine key / sha256 for /v1/models and logs. */
  sha256?: string;
  /** Where the engine runs and the KV cache it was given, for the start-up log. */
  kvCache?: KvCacheInfo;
}

export interface KvCacheInfo {
  backend: "cpu" | "cuda";
  pages: number;
  pageSize: number;
  bytes: number;
  dtype: NonNullable<EngineLoadOptions["kvCacheDtype"]>;
  /** How the page count was reached (an option, or a fraction of which memory). */
  sizedBy: string;
}

/** What native/binding/engine.ts exports as loadEngine: loads, verifies and starts an engine. */
export type ServingEngineLoader = (path: string, options?: EngineLoadOptions) => Promise<ServingEngine>;

export interface ServingEngine {
  readonly info: EngineInfo;
  /**
   * Queues a request; the iterator yields its token batches as the engine loop produces them and
   * ends after the batch with finishReason. Throws EngineOverloadedError synchronously when the
   * queue is full and EngineLimitError when the prompt cannot fit the engine's limits. Breaking out
   * of the iterator (e.g. client disconnect) cancels the request and frees its pages at once.
   */
  submit(request: GenerationRequest): AsyncIterable<TokenBatch>;
  cancel(id: string): void;
  stats(): EngineStats;
  /** Stops the loop after cancelling everything in flight. */
  close(): Promise<void>;
}

export class EngineOverloadedError extends Error {
  override readonly name = "EngineOverloadedError";
}

export class EngineLimitError extends Error {
  override readonly name = "EngineLimitError";
  constructor(
    message: string,
    readonly field: "promptTokens" | "maxTokens",
  ) {
    super(message);
  }
}
