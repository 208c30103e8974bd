import { randomUUID } from "node:crypto";
import Fastify, { type FastifyBaseLogger, type FastifyError, type FastifyInstance } from "fastify";
import type { Logger } from "pino";
import type { RuntimeConfig } from "./config.js";
import { Admission } from "./drain.js";
import { ApiError, errorBody, sendApiError, validationError } from "./errors.js";
import { ServingMetrics } from "./metrics.js";
import type { LoadedModel } from "./model.js";
import { chatCompletionsRoutes } from "./routes/chat-completions.js";
import type { RouteDeps } from "./routes/common.js";
import { completionsRoutes } from "./routes/completions.js";
import { healthRoutes } from "./routes/health.js";
import { metricsRoutes } from "./routes/metrics.js";
import { modelsRoutes } from "./routes/models.js";

export type ServerConfig = Pick<
  RuntimeConfig,
  "maxQueuedRequests" | "retryAfterSeconds" | "maxChoicesPerRequest"
>;

/** What start-up has achieved so far; the server answers probes from it while the engine loads. */
export class ServingState {
  model: LoadedModel | undefined;
  warmedUp = false;
}

export interface RuntimeServer {
  app: FastifyInstance;
  state: ServingState;
  admission: Admission;
  metrics: ServingMetrics;
}

const REQUEST_ID = /^[\w.:-]{1,128}$/;

export async function createServer(config: ServerConfig, logger: Logger): Promise<RuntimeServer> {
  const state = new ServingState();
  const stats = () => state.model?.engine.stats();
  const metrics = new ServingMetrics(stats);
  const admission = new Admission(config.maxQueuedRequests, config.retryAfterSeconds, stats);
  const app = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    // A prompt of a long-context model is larger than fastify's 1 MiB default.
    bodyLimit: 16 * 1024 * 1024,
    // A caller's (or gateway's) x-request-id is kept so one id follows the request across hops.
    requestIdHeader: false,
    genReqId: (req) => {
      const given = req.headers["x-request-id"];
      return typeof given === "string" && REQUEST_ID.test(given) ? given : randomUUID();
    },
    // OpenAI clients send exactly typed JSON; coercing "5" to 5 would hide their bugs, and unknown
    // fields (newer client versions) are ignored rather than stripped or refused.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false } },
  });

  app.addHook("onSend", async (request, reply) => {
    reply.header("x-request-id", request.id);
  });
  app.addHook("onResponse", async (request, reply) => {
    metrics.requests.inc({
      route: request.routeOptions.url ?? "unmatched",
      status: String(reply.statusCode),
    });
  });
  app.setErrorHandler((err: FastifyError, request, reply) => {
    if (err.validation) return sendApiError(reply, validationError(err));
    if (err instanceof ApiError) {
      if (err.status >= 500 || err.status === 429) request.log.warn({ code: err.code }, err.message);
      return sendApiError(reply, err);
    }
    const status = err.statusCode ?? 500;
    if (status < 500)
      return reply.code(status).send(errorBody(err.message, "invalid_request_error", null, err.code ?? null));
    request.log.error({ err }, "request failed");
    return reply.code(500).send(errorBody(`internal error: ${err.message}`, "server_error", null, null));
  });
  app.setNotFoundHandler((request, reply) =>
    reply
      .code(404)
      .send(
        errorBody(`no route ${request.method} ${request.url}`, "invalid_request_error", null, "not_found"),
      ),
  );

  const routeDeps: RouteDeps = {
    model: () => (state.warmedUp ? state.model : undefined),
    admission,
    metrics,
    maxChoicesPerRequest: config.maxChoicesPerRequest,
    retryAfterSeconds: config.retryAfterSeconds,
  };
  await app.register(healthRoutes, {
    healthy: () => stats()?.healthy ?? true,
    notReadyReason: () => {
      if (admission.isTerminating) return "draining";
      if (!state.model) return "loading engine";
      if (!state.warmedUp) return "warming up";
      return stats()?.healthy === false ? "engine loop stopped" : undefined;
    },
  });
  await app.register(metricsRoutes, { metrics });
  await app.register(modelsRoutes, routeDeps);
  await app.register(completionsRoutes, routeDeps);
  await app.register(chatCompletionsRoutes, routeDeps);
  return { app, state, admission, metrics };
}
