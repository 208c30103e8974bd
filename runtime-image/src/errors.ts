import type { FastifyError, FastifyReply } from "fastify";

/** An error with the status and OpenAI-style body the client gets. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
    /** Seconds, for 429/503. */
    readonly retryAfter?: number,
  ) {
    super(message);
  }

  static invalid(message: string, param: string | null, code: string | null = null): ApiError {
    return new ApiError(400, message, "invalid_request_error", param, code);
  }
}

export function errorBody(message: string, type: string, param: string | null, code: string | null) {
  return { error: { message, type, param, code } };
}

export function sendApiError(reply: FastifyReply, err: ApiError): FastifyReply {
  if (err.retryAfter !== undefined) reply.header("retry-after", String(err.retryAfter));
  return reply.code(err.status).send(errorBody(err.message, err.type, err.param, err.code));
}

/** "/messages/0/content" -> "messages[0].content": the way OpenAI names a nested field. */
function fieldName(instancePath: string, missing: unknown): string | null {
  const parts = instancePath.split("/").filter(Boolean);
  if (typeof missing === "string") parts.push(missing);
  if (parts.length === 0) return null;
  return parts.reduce(
    (name, part) => (/^\d+$/.test(part) ? `${name}[${part}]` : name ? `${name}.${part}` : part),
    "",
  );
}

/** Fastify's schema validation failure as a 400 naming the offending field. */
export function validationError(err: FastifyError): ApiError {
  const first = err.validation?.[0];
  if (!first) return ApiError.invalid(err.message, null);
  const param = fieldName(
    first.instancePath,
    (first.params as { missingProperty?: unknown }).missingProperty,
  );
  const detail = first.keyword === "required" ? "is required" : (first.message ?? "is invalid");
  return ApiError.invalid(`${param ?? "body"} ${detail}`, param, "invalid_value");
}
