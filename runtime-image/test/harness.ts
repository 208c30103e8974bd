import { pino } from "pino";
import { loadedModelFrom } from "../src/model.js";
import { createServer, type RuntimeServer, type ServerConfig } from "../src/server.js";
import { FakeEngine, type FakeEngineOptions } from "./fake-engine.js";

export const MODEL = "tiny";

export interface TestRuntime extends RuntimeServer {
  engine: FakeEngine;
}

/** A server on a fake engine, loaded and warmed up unless `ready` is false. */
export async function testRuntime(
  engine: FakeEngineOptions = {},
  config: Partial<ServerConfig> = {},
  ready = true,
): Promise<TestRuntime> {
  const fake = new FakeEngine(engine);
  const server = await createServer(
    { maxQueuedRequests: 16, retryAfterSeconds: 2, maxChoicesPerRequest: 4, ...config },
    pino({ level: "silent" }),
  );
  if (ready) {
    server.state.model = loadedModelFrom(fake, MODEL);
    server.state.warmedUp = true;
  }
  return { ...server, engine: fake };
}

/** The `data:` payloads of an SSE body, JSON-parsed except the final [DONE]. */
export function sseEvents(body: string): unknown[] {
  const frames = body.split("\n\n").filter((f) => f.trim() !== "");
  return frames.map((frame) => {
    if (!frame.startsWith("data: ")) throw new Error(`not an SSE data frame: ${JSON.stringify(frame)}`);
    const data = frame.slice("data: ".length);
    return data === "[DONE]" ? data : JSON.parse(data);
  });
}
