// The serving pod's entrypoint: config from env, listen (probes answer while the engine loads),
// fetch + verify the engine, load it, one warm-up generation, then ready. SIGTERM drains.
import { componentLogger } from "../../lib/logging.js";
import { ConfigError, loadConfig, type RuntimeConfig } from "./config.js";
import { installShutdown } from "./drain.js";
import { fetchEngine, StartupError } from "./engine-fetch.js";
import { loadEngine, localTargetFingerprint } from "./engine-loader.js";
import { loadedModelFrom, warmUp } from "./model.js";
import { createServer } from "./server.js";

const log = componentLogger("runtime");

async function start(config: RuntimeConfig): Promise<void> {
  const server = await createServer(config, log);
  installShutdown({
    admission: server.admission,
    delayMs: config.drainDelaySeconds * 1000,
    wasReady: () => server.state.warmedUp,
    graceMs: config.drainGraceSeconds * 1000,
    engine: () => server.state.model?.engine,
    closeServer: () => server.app.close(),
    exit: (code) => process.exit(code),
    log,
  });
  await server.app.listen({ host: config.host, port: config.port });

  try {
    const fetched = await fetchEngine(
      {
        uri: config.engineUri,
        sha256: config.engineSha256,
        ...(config.engineKey ? { key: config.engineKey } : {}),
        cacheDir: config.cacheDir,
        store: config.store,
        localFingerprint: localTargetFingerprint(),
      },
      log,
    );
    log.info({ path: fetched.path, key: fetched.manifest.key }, "engine verified; loading");
    const engine = await loadEngine(fetched.path, {
      ...config.engine,
      maxQueuedRequests: config.maxQueuedRequests,
      verifiedSha256: fetched.manifest.sha256,
    });
    const kv = engine.info.kvCache;
    if (kv) {
      log.info(
        {
          backend: kv.backend,
          kvCachePages: kv.pages,
          kvCacheBytes: kv.bytes,
          kvPageSize: kv.pageSize,
          kvCacheDtype: kv.dtype,
        },
        `engine on ${kv.backend}; KV cache ${kv.pages} pages, ${(kv.bytes / 2 ** 30).toFixed(2)} GiB (${kv.sizedBy})`,
      );
    }
    server.state.model = loadedModelFrom(engine, config.modelName);
    await warmUp(server.state.model);
    server.state.warmedUp = true;
    log.info({ model: config.modelName, info: { ...engine.info, tokenizerJson: undefined } }, "ready");
  } catch (err) {
    const message = err instanceof StartupError ? err.message : `start-up failed: ${(err as Error).message}`;
    log.fatal({ err: err instanceof StartupError ? undefined : err }, message);
    await server.state.model?.engine.close();
    await server.app.close();
    process.exit(1);
  }
}

try {
  await start(loadConfig());
} catch (err) {
  log.fatal({}, err instanceof ConfigError ? `bad configuration: ${err.message}` : `start-up failed: ${err}`);
  process.exit(1);
}
