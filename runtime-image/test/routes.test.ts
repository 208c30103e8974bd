import { afterEach, describe, expect, test } from "vitest";
import { EngineLimitError } from "../../native/binding/engine-types.js";
import { loadTokenizer } from "../src/tokenizer.js";
import { EOS_ID, tinyTokenizerJson } from "./fixtures/tokenizer.js";
import { MODEL, sseEvents, type TestRuntime, testRuntime } from "./harness.js";

const tokenizer = loadTokenizer(tinyTokenizerJson());
const says =
  (text: string, eos = true) =>
  () => [...tokenizer.encode(text, false), ...(eos ? [EOS_ID] : [])];

let runtime: TestRuntime | undefined;
afterEach(async () => {
  await runtime?.app.close();
  runtime = undefined;
});

async function post(r: TestRuntime, url: string, payload: unknown) {
  return r.app.inject({ method: "POST", url, payload: payload as Record<string, unknown> });
}

describe("POST /v1/completions", () => {
  test("returns the generated text, finish reason and usage counts", async () => {
    runtime = await testRuntime({ reply: says(" world") });
    const res = await post(runtime, "/v1/completions", { model: MODEL, prompt: "hello", temperature: 0 });
    expect(res.statusCode).toBe(200);
    const body = res.json();
    expect(body).toMatchObject({
      object: "text_completion",
      model: MODEL,
      choices: [{ index: 0, text: " world", finish_reason: "stop", logprobs: null }],
      usage: { prompt_tokens: 2, completion_tokens: 2, total_tokens: 4 },
    });
    expect(body.id).toMatch(/^cmpl-/);
    expect(res.headers["x-request-id"]).toBeTruthy();
    // The prompt reached the engine with the tokenizer's BOS, and greedy sampling as asked.
    expect(runtime.engine.submitted[0]).toMatchObject({
      promptTokens: [1, tokenizer.encode("hello", false)[0]],
    });
    expect(runtime.engine.submitted[0]?.sampling?.temperature).toBe(0);
  });

  test("max_tokens ends the generation with finish_reason length", async () => {
    runtime = await testRuntime({ reply: says("hello hello hello", false) });
    const res = await post(runtime, "/v1/completions", { model: MODEL, prompt: "x", max_tokens: 3 });
    expect(res.json().choices[0]).toMatchObject({ finish_reason: "length" });
    expect(res.json().usage.completion_tokens).toBe(3);
    expect(runtime.engine.submitted[0]?.maxTokens).toBe(3);
  });

  test("streams SSE chunks, then a usage chunk when include_usage is set, then [DONE]", async () => {
    runtime = await testRuntime({ reply: says("hello world") });
    const res = await post(runtime, "/v1/completions", {
      model: MODEL,
      prompt: "hi",
      stream: true,
      stream_options: { include_usage: true },
    });
    expect(res.statusCode).toBe(200);
    expect(res.headers["content-type"]).toMatch(/^text\/event-stream/);
    const events = sseEvents(res.body) as Record<string, unknown>[];
    expect(events.at(-1)).toBe("[DONE]");
    const usage = events.at(-2) as { choices: unknown[]; usage: Record<string, number> };
    expect(usage.choices).toEqual([]);
    expect(usage.usage).toEqual({ prompt_tokens: 3, completion_tokens: 3, total_tokens: 6 });
    const chunks = events.slice(0, -2) as {
      choices: { text: string; finish_reason: string | null }[];
      usage: null;
    }[];
    expect(chunks.map((c) => c.choices[0]?.text).join("")).toBe("hello world");
    expect(chunks.at(-1)?.choices[0]?.finish_reason).toBe("stop");
    for (const c of chunks) expect(c.usage).toBeNull();
  });

  test("a stream without include_usage carries no usage at all", async () => {
    runtime = await testRuntime({ reply: says("hi") });
    const res = await post(runtime, "/v1/completions", { model: MODEL, prompt: "hi", stream: true });
    const events = sseEvents(res.body);
    expect(events.at(-1)).toBe("[DONE]");
    for (const e of events.slice(0, -1)) expect(e).not.toHaveProperty("usage");
  });

  test("a stop string spread over several tokens ends the text before it, cancels the engine request, and never streams part of it", async () => {
    runtime = await testRuntime({ reply: says("one two<|end|>three four") });
    expect(tokenizer.encode("<|end|>", false).length).toBeGreaterThanOrEqual(3);
    const res = await post(runtime, "/v1/completions", {
      model: MODEL,
      prompt: "x",
      stop: ["<|end|>"],
      stream: true,
    });
    const events = sseEvents(res.body) as { choices: { text: string; finish_reason: string | null }[] }[];
    const texts = events.slice(0, -1).map((e) => e.choices[0]?.text ?? "");
    expect(texts.join("")).toBe("one two");
    for (const t of texts) expect(t).not.toMatch(/[<|]/);
    expect(events.at(-2)?.choices[0]?.finish_reason).toBe("stop");
    expect(runtime.engine.cancelled).toContain(runtime.engine.submitted[0]?.id);
    expect(runtime.engine.liveRequests).toBe(0);
  });

  test("n choices and a batch of prompts: one engine request each, seeds distinct and reproducible", async () => {
    runtime = await testRuntime({ reply: says("ok") });
    const res = await post(runtime, "/v1/completions", { model: MODEL, prompt: ["a", "b"], n: 2, seed: 40 });
    const body = res.json();
    expect(body.choices.map((c: { index: number }) => c.index)).toEqual([0, 1, 2, 3]);
    expect(runtime.engine.submitted.map((r) => r.sampling?.seed)).toEqual([40, 41, 42, 43]);
    expect(body.usage.prompt_tokens).toBe(8);
  });

  test("a prompt of token ids is passed to the engine unchanged", async () => {
    runtime = await testRuntime();
    const res = await post(runtime, "/v1/completions", { model: MODEL, prompt: [5, 6, 7], max_tokens: 1 });
    expect(res.statusCode).toBe(200);
    expect(runtime.engine.submitted[0]?.promptTokens).toEqual([5, 6, 7]);
  });

  test("sampling fields reach the engine; top_k -1 means no top-k", async () => {
    runtime = await testRuntime();
    await post(runtime, "/v1/completions", {
      model: MODEL,
      prompt: "x",
      temperature: 0.7,
      top_p: 0.9,
      top_k: -1,
      min_p: 0.05,
      presence_penalty: 0.5,
      frequency_penalty: -0.5,
      repetition_penalty: 1.1,
      user: "alice",
    });
    expect(runtime.engine.submitted[0]?.sampling).toEqual({
      temperature: 0.7,
      topP: 0.9,
      minP: 0.05,
      presencePenalty: 0.5,
      frequencyPenalty: -0.5,
      repetitionPenalty: 1.1,
    });
  });

  test("logprobs: n returns each token with its n top alternatives and text offsets", async () => {
    runtime = await testRuntime({ reply: says("hello world") });
    const res = await post(runtime, "/v1/completions", { model: MODEL, prompt: "x", logprobs: 2 });
    const lp = res.json().choices[0].logprobs;
    expect(lp.tokens).toEqual(["hello", " world", "</s>"]);
    expect(lp.token_logprobs).toEqual([-0.5, -0.5, -0.5]);
    expect(Object.keys(lp.top_logprobs[0])).toHaveLength(2);
    expect(lp.text_offset).toEqual([0, 5, 11]);
    expect(runtime.engine.submitted[0]?.logprobs).toBe(2);
  });
});

describe("POST /v1/chat/completions", () => {
  test("renders the chat template, returns the assistant message and usage", async () => {
    runtime = await testRuntime({ reply: says("hi there") });
    const res = await post(runtime, "/v1/chat/completions", {
      model: MODEL,
      messages: [
        { role: "system", content: "be brief" },
        { role: "user", content: [{ type: "text", text: "hello" }] },
      ],
    });
    expect(res.statusCode).toBe(200);
    const body = res.json();
    expect(body).toMatchObject({
      object: "chat.completion",
      choices: [{ index: 0, message: { role: "assistant", content: "hi there" }, finish_reason: "stop" }],
    });
    const prompt = tokenizer.encode("<s>system: be brief\nuser: hello\nassistant:", false);
    expect(prompt[0]).toBe(1);
    expect(runtime.engine.submitted[0]?.promptTokens).toEqual(prompt);
    expect(body.usage.prompt_tokens).toBe(prompt.length);
  });

  test("streams a role chunk, content deltas, a finish chunk, the usage chunk and [DONE]", async () => {
    runtime = await testRuntime({ reply: says("hello world") });
    const res = await post(runtime, "/v1/chat/completions", {
      model: MODEL,
      messages: [{ role: "user", content: "hi" }],
      stream: true,
      stream_options: { include_usage: true },
    });
    const events = sseEvents(res.body) as {
      object: string;
      choices: { delta: { role?: string; content?: string }; finish_reason: string | null }[];
      usage?: unknown;
    }[];
    expect(events[0]?.choices[0]?.delta).toEqual({ role: "assistant", content: "" });
    expect(events.every((e) => (e as unknown) === "[DONE]" || e.object === "chat.completion.chunk")).toBe(
      true,
    );
    const finish = events.at(-3);
    expect(finish?.choices[0]).toMatchObject({ delta: {}, finish_reason: "stop" });
    expect(
      events
        .slice(1, -3)
        .map((e) => e.choices[0]?.delta.content)
        .join(""),
    ).toBe("hello world");
    expect(events.at(-2)).toMatchObject({ choices: [], usage: { completion_tokens: 3 } });
  });

  test("max_completion_tokens and chat logprobs in the chat layout", async () => {
    runtime = await testRuntime({ reply: says("hello world hello", false) });
    const res = await post(runtime, "/v1/chat/completions", {
      model: MODEL,
      messages: [{ role: "user", content: "hi" }],
      max_completion_tokens: 2,
      logprobs: true,
      top_logprobs: 1,
    });
    const choice = res.json().choices[0];
    expect(choice.finish_reason).toBe("length");
    expect(choice.logprobs.content).toHaveLength(2);
    expect(choice.logprobs.content[0]).toMatchObject({
      token: "hello",
      logprob: -0.5,
      bytes: [...Buffer.from("hello")],
    });
    expect(choice.logprobs.content[0].top_logprobs).toHaveLength(1);
  });

  test("a model without a chat template refuses chat with 400 naming messages", async () => {
    runtime = await testRuntime({ info: { chatTemplate: undefined } });
    const res = await post(runtime, "/v1/chat/completions", {
      model: MODEL,
      messages: [{ role: "user", content: "x" }],
    });
    expect(res.statusCode).toBe(400);
    expect(res.json().error).toMatchObject({ param: "messages", code: "no_chat_template" });
  });
});

describe("request validation", () => {
  const cases: [string, string, Record<string, unknown>, string][] = [
    [
      "temperature of the wrong type",
      "/v1/completions",
      { model: MODEL, prompt: "x", temperature: "hot" },
      "temperature",
    ],
    [
      "temperature out of range",
      "/v1/completions",
      { model: MODEL, prompt: "x", temperature: 3 },
      "temperature",
    ],
    ["missing prompt", "/v1/completions", { model: MODEL }, "prompt"],
    ["max_tokens of 0", "/v1/completions", { model: MODEL, prompt: "x", max_tokens: 0 }, "max_tokens"],
    ["n of 0", "/v1/completions", { model: MODEL, prompt: "x", n: 0 }, "n"],
    [
      "a numeric string where an integer belongs",
      "/v1/completions",
      { model: MODEL, prompt: "x", seed: "5" },
      "seed",
    ],
    ["top_p of 0", "/v1/completions", { model: MODEL, prompt: "x", top_p: 0 }, "top_p"],
    ["logprobs above 20", "/v1/completions", { model: MODEL, prompt: "x", logprobs: 21 }, "logprobs"],
    ["stop of the wrong type", "/v1/completions", { model: MODEL, prompt: "x", stop: 5 }, "stop"],
    ["missing model", "/v1/chat/completions", { messages: [{ role: "user", content: "x" }] }, "model"],
    ["empty messages", "/v1/chat/completions", { model: MODEL, messages: [] }, "messages"],
    [
      "an unknown role",
      "/v1/chat/completions",
      { model: MODEL, messages: [{ role: "wizard", content: "x" }] },
      "messages[0].role",
    ],
    [
      "a message without role",
      "/v1/chat/completions",
      { model: MODEL, messages: [{ content: "x" }] },
      "messages[0].role",
    ],
    ["n above the per-request limit", "/v1/completions", { model: MODEL, prompt: "x", n: 5 }, "n"],
    ["echo", "/v1/completions", { model: MODEL, prompt: "x", echo: true }, "echo"],
    ["token ids outside the vocabulary", "/v1/completions", { model: MODEL, prompt: [1, 9999] }, "prompt"],
  ];
  test.each(cases)("%s -> 400 naming the field", async (_what, url, payload, param) => {
    runtime = await testRuntime();
    const res = await post(runtime, url, payload);
    expect(res.statusCode).toBe(400);
    const { error } = res.json();
    expect(error.type).toBe("invalid_request_error");
    expect(error.param).toBe(param);
    expect(error.message).toContain(param.replace(/\[\d+\]/, "").split(".")[0]);
    expect(runtime.engine.submitted).toEqual([]);
  });

  test("a body that is not JSON gets an OpenAI-style 400", async () => {
    runtime = await testRuntime();
    const res = await runtime.app.inject({
      method: "POST",
      url: "/v1/completions",
      headers: { "content-type": "application/json" },
      payload: "{nope",
    });
    expect(res.statusCode).toBe(400);
    expect(res.json().error.type).toBe("invalid_request_error");
  });

  test("an unknown model is 404 model_not_found", async () => {
    runtime = await testRuntime();
    const res = await post(runtime, "/v1/completions", { model: "gpt-9", prompt: "x" });
    expect(res.statusCode).toBe(404);
    expect(res.json().error).toMatchObject({ param: "model", code: "model_not_found" });
  });
});

describe("model limits are enforced before the engine is touched", () => {
  test("a prompt over maxInputLen is 400 on prompt", async () => {
    runtime = await testRuntime({ info: { maxInputLen: 8, maxSeqLen: 16 } });
    const res = await post(runtime, "/v1/completions", { model: MODEL, prompt: "a b c d e f g h i j" });
    expect(res.statusCode).toBe(400);
    expect(res.json().error).toMatchObject({ param: "prompt", code: "context_length_exceeded" });
    expect(res.json().error.message).toMatch(/at most 8 input tokens/);
    expect(runtime.engine.submitted).toEqual([]);
  });

  test("chat messages over maxInputLen are 400 on messages", async () => {
    runtime = await testRuntime({ info: { maxInputLen: 8, maxSeqLen: 16 } });
    const res = await post(runtime, "/v1/chat/completions", {
      model: MODEL,
      messages: [{ role: "user", content: "a long question indeed" }],
    });
    expect(res.json().error).toMatchObject({ param: "messages", code: "context_length_exceeded" });
    expect(runtime.engine.submitted).toEqual([]);
  });

  test("prompt + max_tokens over maxSeqLen is 400 on max_tokens", async () => {
    runtime = await testRuntime({ info: { maxInputLen: 8, maxSeqLen: 16 } });
    const res = await post(runtime, "/v1/completions", { model: MODEL, prompt: "hello", max_tokens: 15 });
    expect(res.statusCode).toBe(400);
    expect(res.json().error).toMatchObject({ param: "max_tokens", code: "context_length_exceeded" });
    expect(runtime.engine.submitted).toEqual([]);
  });

  test("a limit the engine itself reports is a 400 on the field it names", async () => {
    runtime = await testRuntime();
    runtime.engine.submit = () => {
      throw new EngineLimitError("prompt needs more KV pages than the cache has", "promptTokens");
    };
    const res = await post(runtime, "/v1/chat/completions", {
      model: MODEL,
      messages: [{ role: "user", content: "x" }],
    });
    expect(res.statusCode).toBe(400);
    expect(res.json().error).toMatchObject({ param: "messages", code: "context_length_exceeded" });
  });

  test("without max_tokens the request may use what is left of maxSeqLen", async () => {
    runtime = await testRuntime({ info: { maxInputLen: 8, maxSeqLen: 16 } });
    await post(runtime, "/v1/completions", { model: MODEL, prompt: "hello" });
    expect(runtime.engine.submitted[0]?.maxTokens).toBe(14);
  });
});

describe("overload", () => {
  test("beyond the bounded queue requests get 429 with Retry-After, and the server stays healthy", async () => {
    runtime = await testRuntime(
      { manual: true, maxRunning: 1, reply: says("ab", true) },
      { maxQueuedRequests: 1 },
    );
    const r = runtime;
    const first = post(r, "/v1/completions", { model: MODEL, prompt: "x" });
    const second = post(r, "/v1/completions", { model: MODEL, prompt: "y" });
    await expect.poll(() => r.engine.stats()).toMatchObject({ running: 1, waiting: 1 });
    const rejected = await post(r, "/v1/completions", { model: MODEL, prompt: "z" });
    expect(rejected.statusCode).toBe(429);
    expect(rejected.headers["retry-after"]).toBe("2");
    expect(rejected.json().error).toMatchObject({ type: "rate_limit_error", code: "overloaded" });
    expect(r.engine.submitted).toHaveLength(2);

    const timer = setInterval(() => r.engine.step(), 1);
    try {
      expect((await first).statusCode).toBe(200);
      expect((await second).statusCode).toBe(200);
      expect((await r.app.inject({ url: "/healthz" })).statusCode).toBe(200);
      expect((await post(r, "/v1/completions", { model: MODEL, prompt: "again" })).statusCode).toBe(200);
    } finally {
      clearInterval(timer);
    }
  });

  test("the engine's own overload error is a 429 as well", async () => {
    runtime = await testRuntime({ maxQueued: 0, maxRunning: 0 }, { maxQueuedRequests: 100 });
    const res = await post(runtime, "/v1/completions", { model: MODEL, prompt: "x" });
    expect(res.statusCode).toBe(429);
    expect(res.headers["retry-after"]).toBe("2");
  });
});

describe("GET /v1/models", () => {
  test("lists the served model with its context length", async () => {
    runtime = await testRuntime();
    const res = await runtime.app.inject({ url: "/v1/models" });
    expect(res.json()).toMatchObject({
      object: "list",
      data: [{ id: MODEL, object: "model", owned_by: "kiln", max_model_len: 128 }],
    });
  });
});
