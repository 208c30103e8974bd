import type { FastifyPluginAsync } from "fastify";
import type { RouteDeps } from "./common.js";

export const modelsRoutes: FastifyPluginAsync<RouteDeps> = async (app, deps) => {
  app.get("/v1/models", async () => {
    const model = deps.model();
    return {
      object: "list",
      data: model
        ? [
            {
              id: model.name,
              object: "model",
              created: model.createdAt,
              owned_by: "kiln",
              max_model_len: model.info.maxSeqLen,
              ...(model.info.sha256 ? { root: model.info.sha256 } : {}),
            },
          ]
        : [],
    };
  });
};
