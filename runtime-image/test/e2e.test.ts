import { type ChildProcess, spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import OpenAI from "openai";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { runBenchmark } from "../../bench/serving/bench.js";
import { randomPrompts } from "../../bench/serving/workload.js";
import type { ServingEngine } from "../../native/binding/engine-types.js";
import { fetchEngine } from "../src/engine-fetch.js";
import { loadEngine, localTargetFingerprint } from "../src/engine-loader.js";
import { type LoadedModel, loadedModelFrom, warmUp } from "../src/model.js";
import { createServer, type RuntimeServer } from "../src/server.js";
import { buildTinyEngine, type StoredEngine, storeEngine } from "./fixtures/engine-store.js";
import { sseEvents } from "./harness.js";

// The whole serving path on the real native runtime: a tiny engine built by the compiler (with a
// byte-level tokenizer and a chat template embedded), fetched from a file:// store, loaded, warmed
// up and served by fastify on loopback.
const MAIN = fileURLToPath(new URL("../src/main.ts", import.meta.url));
const log = pino({ level: "silent" });
let work: string;
let stored: StoredEngine;
let server: RuntimeServer;
let model: LoadedModel;
let baseUrl: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "kiln-e2e-"));
  stored = await storeEngine(join(work, "store"), await buildTinyEngine(work));
  const fetched = await fetchEngine(
    {
      uri: stored.uri,
      sha256: stored.sha256,
      cacheDir: join(work, "cache"),
      store: {},
      localFingerprint: localTargetFingerprint(),
    },
    log,
  );
  const engine = await loadEngine(fetched.path, { maxQueuedRequests: 128, threads: 1 });
  server = await createServer({ maxQueuedRequests: 128, retryAfterSeconds: 1, maxChoicesPerRequest: 4 }, log);
  model = loadedModelFrom(engine, "tiny");
  server.state.model = model;
  await warmUp(model);
  server.state.warmedUp = true;
  await server.app.listen({ host: "127.0.0.1", port: 0 });
  baseUrl = `http://127.0.0.1:${(server.app.server.address() as AddressInfo).port}/v1`;
}, 120_000);

afterAll(async () => {
  await server?.app.close();
  await model?.engine.close();
  await rm(work, { recursive: true, force: true });
});

/** The engine's own greedy tokens for a prompt, straight from the native runtime. */
async function engineTokens(
  engine: ServingEngine,
  promptTokens: number[],
  maxTokens: number,
): Promise<number[]> {
  const tokens: number[] = [];
  for await (const batch of engine.submit({
    id: `direct-${Math.random()}`,
    promptTokens,
    maxTokens,
    sampling: { temperature: 0 },
  })) {
    tokens.push(...batch.tokens);
  }
  return tokens;
}

describe("serving a real engine", () => {
  test("the engine's embedded tokenizer and chat template are what the server uses", () => {
    expect(model.info.tokenizerJson).toContain('"ByteLevel"');
    expect(model.chatTemplate).toBeDefined();
    expect(model.info.eosTokenIds).toEqual([2]);
  });

  test("a streamed completion carries exactly the engine's greedy tokens, detokenized", async () => {
    const promptTokens = model.tokenizer.encode("hello world", true);
    const expected = await engineTokens(model.engine, promptTokens, 12);
    const res = await fetch(`${baseUrl}/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        model: "tiny",
        prompt: "hello world",
        max_tokens: 12,
        temperature: 0,
        stream: true,
        stream_options: { include_usage: true },
      }),
    });
    const events = sseEvents(await res.text()) as {
      choices: { text?: string }[];
      usage?: Record<string, number>;
    }[];
    expect(events.at(-1)).toBe("[DONE]");
    const text = events
      .slice(0, -1)
      .map((e) => e.choices[0]?.text ?? "")
      .join("");
    expect(text).toBe(model.tokenizer.decode(expected));
    expect(events.at(-2)?.usage).toMatchObject({
      prompt_tokens: promptTokens.length,
      completion_tokens: expected.length,
    });
  });

  test("chat (non-streaming, through the OpenAI client) matches the engine's tokens for the rendered prompt", async () => {
    const client = new OpenAI({ baseURL: baseUrl, apiKey: "unused", maxRetries: 0 });
    const messages = [{ role: "user" as const, content: "hi" }];
    const prompt = model.tokenizer.encode(model.chatTemplate?.render(messages) ?? "", false);
    const expected = await engineTokens(model.engine, prompt, 10);
    const chat = await client.chat.completions.create({
      model: "tiny",
      messages,
      max_tokens: 10,
      temperature: 0,
    });
    expect(chat.choices[0]?.message.content).toBe(model.tokenizer.decode(expected));
    expect(chat.usage).toMatchObject({ prompt_tokens: prompt.length, completion_tokens: expected.length });
  });

  test("64 concurrent streams (the serving benchmark, CI size): none lost, no KV page leaked", async () => {
    const summary = await runBenchmark({
      baseUrl,
      api: "completions",
      prompts: randomPrompts(64, 6, 8, 1),
      requestRate: Number.POSITIVE_INFINITY,
      concurrency: 64,
      seed: 1,
      timeoutS: 120,
    });
    expect(summary.failed).toBe(0);
    expect(summary.completed).toBe(64);
    await expect.poll(() => model.engine.stats()).toMatchObject({ running: 0, waiting: 0, pagesUsed: 0 });
  }, 120_000);
});

describe("the real entrypoint on a real engine", () => {
  let child: ChildProcess | undefined;
  afterAll(() => {
    child?.kill("SIGKILL");
  });

  test("becomes ready; after SIGTERM it fails /readyz, still serves for the drain delay, completes the stream and exits 0", async () => {
    child = spawn(process.execPath, ["--import", "tsx", MAIN], {
      env: {
        PATH: process.env.PATH ?? "",
        HOST: "127.0.0.1",
        PORT: "0",
        KILN_CACHE_DIR: join(work, "main-cache"),
        KILN_ENGINE_URI: stored.uri,
        KILN_ENGINE_SHA256: stored.sha256,
        KILN_MODEL_NAME: "tiny",
        KILN_THREADS: "1",
        KILN_DRAIN_DELAY_SECONDS: "10",
      },
      stdio: ["ignore", "pipe", "inherit"],
    });
    const proc = child;
    // "close": after stdout ended, so "drained; exiting" (written just before exit) has been read.
    const exited = new Promise<number | null>((resolve) => proc.on("close", (code) => resolve(code)));
    let output = "";
    proc.stdout?.on("data", (d: Buffer) => {
      output += d.toString();
    });
    await expect.poll(() => /"msg":"ready"/.test(output), { timeout: 60_000, interval: 100 }).toBe(true);
    const port = /listening at http:\/\/127\.0\.0\.1:(\d+)/.exec(output)?.[1];
    expect(port).toBeDefined();
    const url = `http://127.0.0.1:${port}`;
    expect((await fetch(`${url}/readyz`)).status).toBe(200);

    const res = await fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "tiny", prompt: "hello", max_tokens: 100, temperature: 0, stream: true }),
    });
    const reader = res.body?.getReader();
    const first = await reader?.read();
    expect(first?.done).toBe(false);
    proc.kill("SIGTERM");
    await expect.poll(async () => (await fetch(`${url}/readyz`)).status).toBe(503);
    // A request the Service still routes here during the delay is served, not refused.
    const late = await fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "tiny", prompt: "late", max_tokens: 4, temperature: 0 }),
    });
    expect(late.status).toBe(200);
    let rest = new TextDecoder().decode(first?.value);
    for (;;) {
      const chunk = await reader?.read();
      if (!chunk || chunk.done) break;
      rest += new TextDecoder().decode(chunk.value);
    }
    expect(rest.trimEnd().endsWith("data: [DONE]")).toBe(true);
    expect(rest).toMatch(/"finish_reason":"(stop|length)"/);
    expect(await exited).toBe(0);
    expect(output).toMatch(/"msg":"drained; exiting"/);
  }, 90_000);
});
