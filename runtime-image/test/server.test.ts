import { request as httpRequest } from "node:http";
import type { AddressInfo } from "node:net";
import OpenAI from "openai";
import { afterEach, describe, expect, test, vi } from "vitest";
import { installShutdown, type ShutdownSteps } from "../src/drain.js";
import { loadedModelFrom, warmUp } from "../src/model.js";
import { loadTokenizer } from "../src/tokenizer.js";
import { EOS_ID, tinyTokenizerJson } from "./fixtures/tokenizer.js";
import { MODEL, type TestRuntime, testRuntime } from "./harness.js";

const tokenizer = loadTokenizer(tinyTokenizerJson());

let runtime: TestRuntime | undefined;
afterEach(async () => {
  await runtime?.app.close();
  runtime = undefined;
});

async function listen(r: TestRuntime): Promise<string> {
  await r.app.listen({ host: "127.0.0.1", port: 0 });
  return `http://127.0.0.1:${(r.app.server.address() as AddressInfo).port}`;
}

describe("probes", () => {
  test("/readyz is 503 until the engine is loaded and a warm-up generation succeeded; /healthz follows the engine loop", async () => {
    runtime = await testRuntime({}, {}, false);
    const r = runtime;
    const ready = async () => (await r.app.inject({ url: "/readyz" })).statusCode;
    expect(await ready()).toBe(503);
    expect((await r.app.inject({ url: "/readyz" })).json()).toEqual({ status: "loading engine" });
    // Kubernetes' startup probe uses /healthz: a loading pod is alive.
    expect((await r.app.inject({ url: "/healthz" })).statusCode).toBe(200);

    r.state.model = loadedModelFrom(r.engine, MODEL);
    expect(await ready()).toBe(503);
    const early = await r.app.inject({
      method: "POST",
      url: "/v1/completions",
      payload: { model: MODEL, prompt: "x" },
    });
    expect(early.statusCode).toBe(503);
    expect(early.headers["retry-after"]).toBe("2");

    await warmUp(r.state.model);
    r.state.warmedUp = true;
    expect(await ready()).toBe(200);

    r.engine.healthy = false;
    expect((await r.app.inject({ url: "/healthz" })).statusCode).toBe(503);
    expect(await ready()).toBe(503);
  });

  test("a warm-up that produces nothing fails start-up", async () => {
    runtime = await testRuntime({ reply: () => [] }, {}, false);
    const model = loadedModelFrom(runtime.engine, MODEL);
    runtime.engine.submit = () => ({ async *[Symbol.asyncIterator]() {} });
    await expect(warmUp(model)).rejects.toThrow(/no tokens/);
  });
});

describe("metrics", () => {
  test("/metrics exposes request counts, latencies, token counters and engine gauges by their names", async () => {
    runtime = await testRuntime({ reply: () => [...tokenizer.encode("hi", false), EOS_ID] });
    await runtime.app.inject({
      method: "POST",
      url: "/v1/completions",
      payload: { model: MODEL, prompt: "hello" },
    });
    await runtime.app.inject({
      method: "POST",
      url: "/v1/completions",
      payload: { model: MODEL, prompt: 1 },
    });
    const res = await runtime.app.inject({ url: "/metrics" });
    expect(res.headers["content-type"]).toMatch(/text\/plain/);
    const text = res.body;
    expect(text).toMatch(/kiln_requests_total\{route="\/v1\/completions",status="200"\} 1/);
    expect(text).toMatch(/kiln_requests_total\{route="\/v1\/completions",status="400"\} 1/);
    expect(text).toMatch(/kiln_time_to_first_token_seconds_count 1/);
    expect(text).toMatch(/kiln_inter_token_latency_seconds_count 2/);
    expect(text).toMatch(/kiln_e2e_request_latency_seconds_count 1/);
    expect(text).toMatch(/kiln_prompt_tokens_total 2/);
    expect(text).toMatch(/kiln_generation_tokens_total 3/);
    for (const gauge of [
      "kiln_queue_depth 0",
      "kiln_running_batch_size 0",
      "kiln_kv_pages_used 0",
      "kiln_kv_pages_total 64",
      "kiln_prefix_cache_hit_rate 0.25",
      "kiln_generation_tokens_per_second 0",
      "kiln_engine_healthy 1",
    ]) {
      expect(text).toContain(gauge);
    }
  });
});

describe("client disconnect", () => {
  test("closing a streaming request cancels it in the engine and frees it", async () => {
    runtime = await testRuntime({ manual: true, reply: () => tokenizer.encode("hello world", false) });
    const r = runtime;
    const base = await listen(r);
    const timer = setInterval(() => r.engine.step(), 2);
    try {
      await new Promise<void>((resolve, reject) => {
        const req = httpRequest(`${base}/v1/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
        });
        req.on("response", (res) => {
          res.once("data", () => {
            req.destroy();
            resolve();
          });
        });
        req.on("error", (err) => {
          if ((err as NodeJS.ErrnoException).code !== "ECONNRESET") reject(err);
        });
        req.end(JSON.stringify({ model: MODEL, prompt: "x", stream: true, max_tokens: 100 }));
      });
      await expect.poll(() => r.engine.cancelled).toEqual([r.engine.submitted[0]?.id]);
      await expect.poll(() => r.engine.liveRequests).toBe(0);
      expect((await r.app.inject({ url: "/metrics" })).body).toMatch(/status="499"\} 1/);
    } finally {
      clearInterval(timer);
    }
  });

  test("closing a non-streaming request cancels it in the engine too", async () => {
    runtime = await testRuntime({ manual: true, reply: () => tokenizer.encode("hello", false) });
    const r = runtime;
    const base = await listen(r);
    const req = httpRequest(`${base}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
    });
    req.on("error", () => {});
    req.end(JSON.stringify({ model: MODEL, messages: [{ role: "user", content: "x" }], max_tokens: 50 }));
    await expect.poll(() => r.engine.submitted.length).toBe(1);
    r.engine.step();
    req.destroy();
    await expect.poll(() => r.engine.cancelled).toEqual([r.engine.submitted[0]?.id]);
    await expect.poll(() => r.engine.liveRequests).toBe(0);
  });
});

describe("the official OpenAI client", () => {
  test("completions, chat and streamed chat with usage work unchanged", async () => {
    runtime = await testRuntime({ reply: () => [...tokenizer.encode("hello world", false), EOS_ID] });
    const client = new OpenAI({ baseURL: `${await listen(runtime)}/v1`, apiKey: "unused", maxRetries: 0 });

    const completion = await client.completions.create({ model: MODEL, prompt: "say", max_tokens: 8 });
    expect(completion.choices[0]?.text).toBe("hello world");

    const chat = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: "hi" }],
    });
    expect(chat.choices[0]?.message.content).toBe("hello world");
    expect(chat.usage?.completion_tokens).toBe(3);

    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: "user", content: "hi" }],
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let usage: OpenAI.CompletionUsage | undefined | null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? "";
      if (chunk.usage) usage = chunk.usage;
    }
    expect(text).toBe("hello world");
    expect(usage?.total_tokens).toBe((usage?.prompt_tokens ?? 0) + 3);

    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual([MODEL]);

    await expect(
      client.completions.create({ model: MODEL, prompt: "x", temperature: 9 }),
    ).rejects.toMatchObject({ status: 400, param: "temperature" });
  });
});

/** installShutdown on `r` (no delay, was ready, exit spied, silent), overridden by `steps`. */
function shutdownOf(r: TestRuntime, steps: Partial<ShutdownSteps> = {}) {
  const exit = vi.fn();
  const shutdown = installShutdown({
    admission: r.admission,
    delayMs: 0,
    wasReady: () => true,
    graceMs: 10_000,
    engine: () => r.engine,
    closeServer: () => r.app.close(),
    exit,
    log: { info: () => {}, warn: () => {} },
    ...steps,
  });
  const remove = () => {
    process.removeListener("SIGTERM", shutdown);
    process.removeListener("SIGINT", shutdown);
  };
  return { shutdown, exit, remove };
}

describe("drain on SIGTERM", () => {
  test("in-flight streams finish, new requests get 503, /readyz fails, then the process exits 0", async () => {
    runtime = await testRuntime({
      manual: true,
      reply: () => [...tokenizer.encode("hello world", false), EOS_ID],
    });
    const r = runtime;
    const base = await listen(r);
    const closeEngine = vi.spyOn(r.engine, "close");
    const { shutdown, exit, remove } = shutdownOf(r);
    try {
      const inFlight = fetch(`${base}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: MODEL, prompt: "x", stream: true }),
      }).then((res) => res.text());
      await expect.poll(() => r.engine.submitted.length).toBe(1);

      process.emit("SIGTERM");
      expect(r.admission.isDraining).toBe(true);
      const refused = await r.app.inject({
        method: "POST",
        url: "/v1/completions",
        payload: { model: MODEL, prompt: "y" },
      });
      expect(refused.statusCode).toBe(503);
      expect(refused.headers["retry-after"]).toBe("2");
      expect(refused.json().error.code).toBe("draining");
      expect((await r.app.inject({ url: "/readyz" })).json()).toEqual({ status: "draining" });
      expect(exit).not.toHaveBeenCalled();

      const timer = setInterval(() => r.engine.step(), 2);
      const body = await inFlight;
      clearInterval(timer);
      expect(body).toContain('"finish_reason":"stop"');
      expect(body.trimEnd().endsWith("data: [DONE]")).toBe(true);
      await shutdown();
      expect(closeEngine).toHaveBeenCalled();
      expect(exit).toHaveBeenCalledWith(0);
      expect(r.engine.cancelled).toEqual([]);
    } finally {
      remove();
    }
  });

  test("a pod that was ready fails /readyz at once but admits for the delay, then refuses and drains", async () => {
    runtime = await testRuntime({ manual: true });
    const r = runtime;
    const { shutdown, exit, remove } = shutdownOf(r, { delayMs: 2_000 });
    const completion = (prompt: string) =>
      r.app.inject({ method: "POST", url: "/v1/completions", payload: { model: MODEL, prompt } });
    try {
      const done = shutdown();
      expect((await r.app.inject({ url: "/readyz" })).json()).toEqual({ status: "draining" });
      // Within the delay a request routed here before the endpoints caught up is still served.
      const late = completion("x");
      await expect.poll(() => r.engine.submitted.length).toBe(1);
      expect(r.admission.isDraining).toBe(false);
      await expect.poll(() => r.admission.isDraining).toBe(true);
      const refused = await completion("y");
      expect(refused.statusCode).toBe(503);
      expect(refused.json().error.code).toBe("draining");
      expect(exit).not.toHaveBeenCalled();
      const timer = setInterval(() => r.engine.step(), 2);
      expect((await late).statusCode).toBe(200);
      clearInterval(timer);
      await done;
      expect(exit).toHaveBeenCalledWith(0);
      expect(r.engine.cancelled).toEqual([]);
    } finally {
      remove();
    }
  });

  test("a pod that never became ready refuses at once: no Service routes to it", async () => {
    runtime = await testRuntime({ manual: true });
    const r = runtime;
    const { shutdown, exit, remove } = shutdownOf(r, { delayMs: 60_000, wasReady: () => false });
    try {
      await shutdown();
      expect(r.admission.isDraining).toBe(true);
      expect(exit).toHaveBeenCalledWith(0);
    } finally {
      remove();
    }
  });

  test("requests still running when the grace period ends are cancelled and the process still exits 0", async () => {
    runtime = await testRuntime({ manual: true });
    const r = runtime;
    const { shutdown, exit, remove } = shutdownOf(r, { graceMs: 50 });
    try {
      const inFlight = r.app.inject({
        method: "POST",
        url: "/v1/completions",
        payload: { model: MODEL, prompt: "x" },
      });
      await expect.poll(() => r.engine.submitted.length).toBe(1);
      await shutdown();
      expect(exit).toHaveBeenCalledWith(0);
      expect(r.engine.cancelled).toEqual([r.engine.submitted[0]?.id]);
      await inFlight;
    } finally {
      remove();
    }
  });
});
