import type { FastifyPluginAsync } from "fastify";
import type { ChatMessage } from "../chat-template.js";
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

type Content = string | { type: "text"; text: string }[] | null;

interface ChatBody extends SamplingBody {
  messages: { role: string; content?: Content; name?: string }[];
  max_completion_tokens?: number | null;
  logprobs?: boolean | null;
  top_logprobs?: number | null;
}

const bodySchema = {
  type: "object",
  required: ["model", "messages"],
  properties: {
    ...samplingProperties,
    messages: {
      type: "array",
      minItems: 1,
      items: {
        type: "object",
        required: ["role"],
        properties: {
          role: { type: "string", enum: ["system", "developer", "user", "assistant", "tool"] },
          content: {
            anyOf: [
              { type: "string" },
              {
                type: "array",
                items: {
                  type: "object",
                  required: ["type", "text"],
                  properties: { type: { const: "text" }, text: { type: "string" } },
                },
              },
              { type: "null" },
            ],
          },
          name: { type: "string" },
        },
      },
    },
    max_completion_tokens: { type: ["integer", "null"], minimum: 1 },
    logprobs: { type: ["boolean", "null"] },
    top_logprobs: { type: ["integer", "null"], minimum: 0, maximum: 20 },
  },
} as const;

function flatten(messages: ChatBody["messages"]): ChatMessage[] {
  return messages.map((m) => ({
    role: m.role,
    content: typeof m.content === "string" ? m.content : (m.content ?? []).map((part) => part.text).join(""),
    ...(m.name ? { name: m.name } : {}),
  }));
}

function chatLogprobs(entries: TokenChoiceLogprob[] | undefined) {
  if (!entries) return null;
  const bytes = (text: string) => [...Buffer.from(text, "utf8")];
  return {
    content: entries.map((e) => ({
      token: e.text,
      logprob: e.logprob,
      bytes: bytes(e.text),
      top_logprobs: e.top.map((t) => ({ token: t.text, logprob: t.logprob, bytes: bytes(t.text) })),
    })),
  };
}

function chatShape(id: string, model: string, includeUsage: boolean): ResponseShape {
  return responseShape(
    { id, model, chunkObject: "chat.completion.chunk", completeObject: "chat.completion", includeUsage },
    {
      delta: (content) => ({ delta: { content } }),
      finished: { delta: {} },
      whole: (content) => ({ message: { role: "assistant", content } }),
      logprobs: (_index, entries) => chatLogprobs(entries),
      opening: (choiceChunk, index) =>
        choiceChunk(index, { delta: { role: "assistant", content: "" } }, null, null),
    },
  );
}

export const chatCompletionsRoutes: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  app.post<{ Body: ChatBody }>(
    "/v1/chat/completions",
    { schema: { body: bodySchema } },
    async (request, reply) => {
      const arrivedAt = performance.now();
      const body = request.body;
      const model = modelFor(deps, body.model);
      if (!model.chatTemplate) {
        throw ApiError.invalid(
          `model "${model.name}" has no chat template; use /v1/completions`,
          "messages",
          "no_chat_template",
        );
      }
      let promptText: string;
      try {
        promptText = model.chatTemplate.render(flatten(body.messages));
      } catch (err) {
        // Templates raise on conversations they do not support (e.g. roles out of order).
        throw ApiError.invalid(
          `messages cannot be rendered by the chat template: ${(err as Error).message}`,
          "messages",
        );
      }
      const prompt = model.tokenizer.encode(promptText, false);
      const maxTokens = body.max_completion_tokens ?? body.max_tokens;
      const plan = planGeneration(
        model,
        { ...body, max_tokens: maxTokens ?? null },
        [prompt],
        "messages",
        deps.maxChoicesPerRequest,
      );
      const includeUsage = body.stream_options?.include_usage === true;
      return respond(
        deps,
        request,
        reply,
        model,
        {
          ...plan,
          ...(body.logprobs ? { logprobs: body.top_logprobs ?? 0 } : {}),
          stream: body.stream === true,
          includeUsage,
        },
        chatShape(`chatcmpl-${request.id}`, model.name, includeUsage),
        arrivedAt,
      );
    },
  );
};
