import type { BenchPrompt } from "./workload.js";

export type Api = "completions" | "chat";

/** What one streamed request measured (times in seconds). */
export interface RequestResult {
  ok: boolean;
  error?: string;
  promptTokens: number;
  outputTokens: number;
  ttft: number;
  /** Gaps between consecutive streamed chunks that carried text. */
  itl: number[];
  e2e: number;
}

interface Chunk {
  choices?: { text?: string; delta?: { content?: string } }[];
  usage?: { prompt_tokens: number; completion_tokens: number } | null;
}

/** Sends one streaming request and times it; never throws (failures are results). */
export async function timedRequest(
  baseUrl: string,
  api: Api,
  model: string,
  item: BenchPrompt,
  signal: AbortSignal,
): Promise<RequestResult> {
  const start = performance.now();
  const result: RequestResult = { ok: false, promptTokens: 0, outputTokens: 0, ttft: 0, itl: [], e2e: 0 };
  const common = {
    model,
    max_tokens: item.outputLen,
    temperature: 0,
    stream: true,
    stream_options: { include_usage: true },
  };
  const body =
    api === "chat"
      ? { ...common, messages: [{ role: "user", content: item.prompt }] }
      : { ...common, prompt: item.prompt };
  try {
    const res = await fetch(`${baseUrl}/${api === "chat" ? "chat/completions" : "completions"}`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
      signal,
    });
    if (!res.ok || !res.body) {
      result.error = `HTTP ${res.status}: ${(await res.text()).slice(0, 200)}`;
      return result;
    }
    let last = 0;
    let buffered = "";
    const decoder = new TextDecoder();
    for await (const bytes of res.body) {
      buffered += decoder.decode(bytes as Uint8Array, { stream: true });
      let end = buffered.indexOf("\n\n");
      while (end !== -1) {
        const frame = buffered.slice(0, end).trim();
        buffered = buffered.slice(end + 2);
        end = buffered.indexOf("\n\n");
        if (!frame.startsWith("data:")) continue;
        const data = frame.slice(5).trim();
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data) as Chunk;
        const text = chunk.choices?.[0]?.text ?? chunk.choices?.[0]?.delta?.content ?? "";
        if (text) {
          const now = performance.now();
          if (last === 0) result.ttft = (now - start) / 1000;
          else result.itl.push((now - last) / 1000);
          last = now;
        }
        if (chunk.usage) {
          result.promptTokens = chunk.usage.prompt_tokens;
          result.outputTokens = chunk.usage.completion_tokens;
        }
      }
    }
    result.e2e = (performance.now() - start) / 1000;
    result.ok = result.outputTokens > 0 || result.ttft > 0;
    if (!result.ok) result.error = "the stream carried no tokens";
  } catch (err) {
    result.error = (err as Error).message;
  }
  return result;
}
