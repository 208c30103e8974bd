import type { FastifyPluginAsync } from "fastify";

export interface HealthDeps {
  /** False once the engine loop has died: the kubelet should restart the pod. */
  healthy(): boolean;
  /** Why the pod must not receive traffic now (loading, warming up, draining), or undefined when ready. */
  notReadyReason(): string | undefined;
}

export const healthRoutes: FastifyPluginAsync<HealthDeps> = async (app, deps) => {
  // Probes are frequent; their lines would drown the request log.
  app.get("/healthz", { logLevel: "warn" }, async (_request, reply) =>
    deps.healthy() ? { status: "ok" } : reply.code(503).send({ status: "engine loop stopped" }),
  );
  app.get("/readyz", { logLevel: "warn" }, async (_request, reply) => {
    const reason = deps.notReadyReason();
    return reason === undefined ? { status: "ready" } : reply.code(503).send({ status: reason });
  });
};
