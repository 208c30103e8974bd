import type { FastifyPluginAsync } from "fastify";
import { ApiError } from "../errors.js";
import type { TokenChoiceLogprob } from "../generation.js";
import {
  modelFor,
  planGeneration,
  type ResponseShape,
  type RouteDeps,
  respond,
  type SamplingBody,
  samplingProperties,
} from "./common.js";
import { responseShape } from "./response-shape.js";

interface CompletionBody extends SamplingBody {
  prompt: string | string[] | number[] | number[][];
  logprobs?: number | null;
  echo?: boolean | null;
  suffix?: string | null;
}

const bodySchema = {
  type: "object",
  required: ["model", "prompt"],
  properties: {
    ...samplingProperties,
    prompt: {
      anyOf: [
        { type: "string" },
        { type: "array", minItems: 1, items: { type: "string" } },
        { type: "array", minItems: 1, items: { type: "integer" } },
        { type: "array", minItems: 1, items: { type: "array", minItems: 1, items: { type: "integer" } } },
      ],
    },
    logprobs: { type: ["integer", "null"], minimum: 0, maximum: 20 },
    echo: { type: ["boolean", "null"] },
    suffix: { type: ["string", "null"] },
  },
} as const;

/** Token-level logprobs in the legacy completions layout, with offsets into the choice's text. */
class CompletionLogprobs {
  private offsets = new Map<number, number>();

  format(index: number, entries: TokenChoiceLogprob[] | undefined) {
    if (!entries) return null;
    let offset = this.offsets.get(index) ?? 0;
    const textOffset: number[] = [];
    for (const e of entries) {
      textOffset.push(offset);
      offset += e.text.length;
    }
    this.offsets.set(index, offset);
    return {
      tokens: entries.map((e) => e.text),
      token_logprobs: entries.map((e) => e.logprob),
      top_logprobs: entries.map((e) => Object.fromEntries(e.top.map((t) => [t.text, t.logprob]))),
      text_offset: textOffset,
    };
  }
}

function completionShape(id: string, model: string, includeUsage: boolean): ResponseShape {
  const logprobs = new CompletionLogprobs();
  return responseShape(
    { id, model, chunkObject: "text_completion", completeObject: "text_completion", includeUsage },
    {
      delta: (text) => ({ text }),
      finished: { text: "" },
      whole: (text) => ({ text }),
      logprobs: (index, entries) => logprobs.format(index, entries),
    },
  );
}

export const completionsRoutes: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  app.post<{ Body: CompletionBody }>(
    "/v1/completions",
    { schema: { body: bodySchema } },
    async (request, reply) => {
      const arrivedAt = performance.now();
      const body = request.body;
      const model = modelFor(deps, body.model);
      if (body.echo) throw ApiError.invalid("echo is not supported", "echo", "unsupported");
      if (body.suffix) throw ApiError.invalid("suffix is not supported", "suffix", "unsupported");
      const raw = body.prompt;
      const prompts: number[][] =
        typeof raw === "string"
          ? [model.tokenizer.encode(raw, true)]
          : typeof raw[0] === "number"
            ? [raw as number[]]
            : (raw as (string | number[])[]).map((p) =>
                typeof p === "string" ? model.tokenizer.encode(p, true) : p,
              );
      const plan = planGeneration(model, body, prompts, "prompt", deps.maxChoicesPerRequest);
      return respond(
        deps,
        request,
        reply,
        model,
        {
          ...plan,
          ...(body.logprobs != null ? { logprobs: body.logprobs } : {}),
          stream: body.stream === true,
          includeUsage: body.stream_options?.include_usage === true,
        },
        completionShape(`cmpl-${request.id}`, model.name, body.stream_options?.include_usage === true),
        arrivedAt,
      );
    },
  );
};
