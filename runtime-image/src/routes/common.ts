import { once } from "node:events";
import type { FastifyReply, FastifyRequest } from "fastify";
import {
  EngineLimitError,
  EngineOverloadedError,
  type SamplingParams,
} from "../../../native/binding/engine-types.js";
import type { Admission } from "../drain.js";
import { ApiError, errorBody } from "../errors.js";
import {
  type ChoiceSpec,
  type Generation,
  type GenerationEvent,
  type GenerationUsage,
  startGeneration,
  type TokenChoiceLogprob,
} from "../generation.js";
import type { ServingMetrics } from "../metrics.js";
import type { LoadedModel } from "../model.js";

/** What every route plugin gets from the server. */
export interface RouteDeps {
  /** The loaded, warmed-up model; undefined while start-up is still loading it. */
  model(): LoadedModel | undefined;
  admission: Admission;
  metrics: ServingMetrics;
  maxChoicesPerRequest: number;
  retryAfterSeconds: number;
}

/** Request fields shared by /v1/completions and /v1/chat/completions (JSON schema properties). */
export const samplingProperties = {
  model: { type: "string", minLength: 1 },
  n: { type: "integer", minimum: 1 },
  max_tokens: { type: ["integer", "null"], minimum: 1 },
  temperature: { type: ["number", "null"], minimum: 0, maximum: 2 },
  top_p: { type: ["number", "null"], exclusiveMinimum: 0, maximum: 1 },
  top_k: { type: ["integer", "null"], minimum: -1 },
  min_p: { type: ["number", "null"], minimum: 0, maximum: 1 },
  seed: { type: ["integer", "null"] },
  stop: {
    anyOf: [
      { type: "string", minLength: 1 },
      { type: "array", items: { type: "string", minLength: 1 }, maxItems: 16 },
      { type: "null" },
    ],
  },
  presence_penalty: { type: ["number", "null"], minimum: -2, maximum: 2 },
  frequency_penalty: { type: ["number", "null"], minimum: -2, maximum: 2 },
  repetition_penalty: { type: ["number", "null"], exclusiveMinimum: 0, maximum: 10 },
  user: { type: "string" },
  stream: { type: ["boolean", "null"] },
  stream_options: {
    type: ["object", "null"],
    properties: { include_usage: { type: "boolean" } },
  },
} as const;

export interface SamplingBody {
  model: string;
  n?: number;
  max_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  top_k?: number | null;
  min_p?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  presence_penalty?: number | null;
  frequency_penalty?: number | null;
  repetition_penalty?: number | null;
  user?: string;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean } | null;
}

/** The loaded model the request names, or the 503/404 it gets instead. */
export function modelFor(deps: RouteDeps, requested: string): LoadedModel {
  const model = deps.model();
  if (!model) {
    throw new ApiError(
      503,
      "the model is still loading",
      "service_unavailable",
      null,
      "loading",
      deps.retryAfterSeconds,
    );
  }
  if (requested !== model.name) {
    throw new ApiError(
      404,
      `model "${requested}" does not exist; this server serves "${model.name}"`,
      "invalid_request_error",
      "model",
      "model_not_found",
    );
  }
  return model;
}

function sampling(body: SamplingBody, choice: number): SamplingParams {
  const out: SamplingParams = { temperature: body.temperature ?? 1 };
  if (body.top_p != null) out.topP = body.top_p;
  // -1 and 0 both mean "no top-k" in the APIs clients copy from.
  if (body.top_k != null && body.top_k > 0) out.topK = body.top_k;
  if (body.min_p != null) out.minP = body.min_p;
  // n choices with one seed must still differ from each other, reproducibly.
  if (body.seed != null) out.seed = body.seed + choice;
  if (body.presence_penalty != null) out.presencePenalty = body.presence_penalty;
  if (body.frequency_penalty != null) out.frequencyPenalty = body.frequency_penalty;
  if (body.repetition_penalty != null) out.repetitionPenalty = body.repetition_penalty;
  return out;
}

export interface PlannedGeneration {
  /** The request field the prompt came from ("prompt" or "messages"), for errors. */
  promptParam: string;
  choices: ChoiceSpec[];
  maxTokens: number;
  sampling: (choice: number) => SamplingParams;
  stop: string[];
}

/**
 * Checks the prompts against the engine's limits before anything reaches the engine, and resolves
 * max_tokens (by default: what is left of maxSeqLen after the longest prompt).
 */
export function planGeneration(
  model: LoadedModel,
  body: SamplingBody,
  prompts: number[][],
  promptParam: string,
  maxChoices: number,
): PlannedGeneration {
  const n = body.n ?? 1;
  if (n * prompts.length > maxChoices) {
    throw ApiError.invalid(`n (${n}) x prompts (${prompts.length}) must be at most ${maxChoices}`, "n");
  }
  const { maxInputLen, maxSeqLen, vocabSize } = model.info;
  let longest = 0;
  for (const prompt of prompts) {
    if (prompt.length === 0) throw ApiError.invalid(`${promptParam} must not be empty`, promptParam);
    if (prompt.length > maxInputLen) {
      throw ApiError.invalid(
        `${promptParam} is ${prompt.length} tokens; this model accepts at most ${maxInputLen} input tokens`,
        promptParam,
        "context_length_exceeded",
      );
    }
    const bad = prompt.find((t) => !Number.isInteger(t) || t < 0 || t >= vocabSize);
    if (bad !== undefined) {
      throw ApiError.invalid(
        `${promptParam} has token id ${bad} outside the vocabulary (0..${vocabSize - 1})`,
        promptParam,
      );
    }
    longest = Math.max(longest, prompt.length);
  }
  const room = maxSeqLen - longest;
  if (body.max_tokens != null && body.max_tokens > room) {
    throw ApiError.invalid(
      `max_tokens (${body.max_tokens}) plus the prompt (${longest} tokens) exceeds this model's maximum sequence length of ${maxSeqLen}`,
      "max_tokens",
      "context_length_exceeded",
    );
  }
  if (room < 1) {
    throw ApiError.invalid(
      `${promptParam} (${longest} tokens) leaves no room to generate within ${maxSeqLen} tokens`,
      promptParam,
      "context_length_exceeded",
    );
  }
  const choices: ChoiceSpec[] = [];
  prompts.forEach((promptTokens, p) => {
    for (let i = 0; i < n; i++) choices.push({ index: p * n + i, promptTokens });
  });
  const stop = body.stop == null ? [] : typeof body.stop === "string" ? [body.stop] : body.stop;
  return {
    promptParam,
    choices,
    maxTokens: body.max_tokens ?? room,
    sampling: (c) => sampling(body, c),
    stop,
  };
}

/** How one API shapes the generation's events into its JSON bodies. */
export interface ResponseShape {
  /** Chunks sent before any text (chat: the assistant role). */
  opening(choices: ChoiceSpec[]): unknown[];
  chunk(event: GenerationEvent): unknown;
  usageChunk(usage: GenerationUsage): unknown;
  complete(choices: FinishedChoice[], usage: GenerationUsage): unknown;
}

export interface FinishedChoice {
  index: number;
  text: string;
  logprobs: TokenChoiceLogprob[] | undefined;
  finishReason: "stop" | "length";
}

export function usageBody(usage: GenerationUsage) {
  return {
    prompt_tokens: usage.promptTokens,
    completion_tokens: usage.completionTokens,
    total_tokens: usage.promptTokens + usage.completionTokens,
    ...(usage.cachedPromptTokens
      ? { prompt_tokens_details: { cached_tokens: usage.cachedPromptTokens } }
      : {}),
  };
}

/**
 * Runs a planned generation for one HTTP request: admission, engine errors as 429/400, streaming
 * (SSE) or a single JSON body, and cancellation in the engine when the client goes away.
 */
export async function respond(
  deps: RouteDeps,
  request: FastifyRequest,
  reply: FastifyReply,
  model: LoadedModel,
  plan: PlannedGeneration & { logprobs?: number; stream: boolean; includeUsage: boolean },
  shape: ResponseShape,
  arrivedAt: number,
): Promise<unknown> {
  const release = deps.admission.admit();
  const abort = new AbortController();
  const onClose = () => {
    if (!reply.raw.writableFinished) {
      deps.metrics.requests.inc({ route: request.routeOptions.url ?? "", status: "499" });
      request.log.info({ event: "client-disconnected" }, "client went away; cancelling its generation");
      abort.abort();
    }
  };
  reply.raw.on("close", onClose);
  try {
    let generation: Generation;
    try {
      generation = startGeneration(model, deps.metrics, {
        requestId: request.id,
        choices: plan.choices,
        maxTokens: plan.maxTokens,
        sampling: plan.sampling,
        stop: plan.stop,
        ...(plan.logprobs !== undefined ? { logprobs: plan.logprobs } : {}),
        signal: abort.signal,
        arrivedAt,
      });
    } catch (err) {
      if (err instanceof EngineOverloadedError) throw deps.admission.overloaded();
      if (err instanceof EngineLimitError) {
        throw ApiError.invalid(
          err.message,
          err.field === "maxTokens" ? "max_tokens" : plan.promptParam,
          "context_length_exceeded",
        );
      }
      throw err;
    }
    // Sizes only: prompt text stays out of the logs.
    request.log.info(
      {
        choices: plan.choices.length,
        promptTokens: generation.usage.promptTokens,
        maxTokens: plan.maxTokens,
        stream: plan.stream,
      },
      "generation started",
    );
    if (plan.stream)
      return await streamEvents(request, reply, generation, plan.includeUsage, shape, abort.signal);
    const finished = new Map<number, FinishedChoice>();
    for (const c of plan.choices) {
      finished.set(c.index, {
        index: c.index,
        text: "",
        logprobs: plan.logprobs !== undefined ? [] : undefined,
        finishReason: "stop",
      });
    }
    for await (const event of generation.events) {
      const choice = finished.get(event.index);
      if (!choice) continue;
      if (event.kind === "text") {
        choice.text += event.text;
        if (event.logprobs) choice.logprobs?.push(...event.logprobs);
      } else {
        choice.finishReason = event.reason;
      }
    }
    if (abort.signal.aborted) return reply;
    return reply.send(shape.complete([...finished.values()], generation.usage));
  } finally {
    reply.raw.off("close", onClose);
    release();
  }
}

async function streamEvents(
  request: FastifyRequest,
  reply: FastifyReply,
  generation: Generation,
  includeUsage: boolean,
  shape: ResponseShape,
  signal: AbortSignal,
): Promise<FastifyReply> {
  reply.hijack();
  const raw = reply.raw;
  raw.writeHead(200, {
    "content-type": "text/event-stream; charset=utf-8",
    "cache-control": "no-cache",
    connection: "keep-alive",
    "x-request-id": request.id,
  });
  const send = async (data: unknown) => {
    if (signal.aborted) return;
    const ok = raw.write(`data: ${typeof data === "string" ? data : JSON.stringify(data)}\n\n`);
    // Backpressure: a slow reader holds the generation's text in this process, not unbounded buffers.
    if (!ok && !signal.aborted) await Promise.race([once(raw, "drain"), once(raw, "close")]);
  };
  try {
    for (const chunk of shape.opening(generation.choices)) await send(chunk);
    for await (const event of generation.events) await send(shape.chunk(event));
    if (includeUsage) await send(shape.usageChunk(generation.usage));
    await send("[DONE]");
  } catch (err) {
    // Headers are gone already: the error travels in the stream, the way OpenAI servers do it.
    request.log.error({ err }, "generation failed mid-stream");
    await send(errorBody(`generation failed: ${(err as Error).message}`, "server_error", null, null));
  }
  raw.end();
  return reply;
}
