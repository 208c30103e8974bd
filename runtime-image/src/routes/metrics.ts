import type { FastifyPluginAsync } from "fastify";
import type { ServingMetrics } from "../metrics.js";

export const metricsRoutes: FastifyPluginAsync<{ metrics: ServingMetrics }> = async (app, { metrics }) => {
  app.get("/metrics", { logLevel: "warn" }, async (_request, reply) =>
    reply.type(metrics.registry.contentType).send(await metrics.registry.metrics()),
  );
};
