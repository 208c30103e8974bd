import type { EngineInfo, ServingEngine } from "../../native/binding/engine-types.js";
import { ChatTemplate } from "./chat-template.js";
import { loadTokenizer, type TextTokenizer } from "./tokenizer.js";

/** A loaded engine with the text side the HTTP layer needs: its tokenizer and chat template. */
export interface LoadedModel {
  /** The id clients address it by. */
  name: string;
  engine: ServingEngine;
  info: EngineInfo;
  tokenizer: TextTokenizer;
  /** Absent when the checkpoint shipped none: chat completions are then refused. */
  chatTemplate?: ChatTemplate;
  createdAt: number;
}

export function loadedModelFrom(engine: ServingEngine, name: string): LoadedModel {
  const info = engine.info;
  const tokenizer = loadTokenizer(info.tokenizerJson);
  const tokenText = (id: number | undefined) => (id === undefined ? undefined : tokenizer.tokenText(id));
  const bosToken = tokenText(info.bosTokenId);
  const eosToken = tokenText(info.eosTokenIds[0]);
  const chatTemplate = info.chatTemplate
    ? new ChatTemplate(info.chatTemplate, {
        ...(bosToken !== undefined ? { bosToken } : {}),
        ...(eosToken !== undefined ? { eosToken } : {}),
      })
    : undefined;
  return {
    name,
    engine,
    info,
    tokenizer,
    ...(chatTemplate ? { chatTemplate } : {}),
    createdAt: Math.floor(Date.now() / 1000),
  };
}

/** One short greedy generation through the whole path (tokenizer, engine loop, detokenizer). */
export async function warmUp(model: LoadedModel): Promise<void> {
  const prompt = model.tokenizer.encode("Hello", true);
  let tokens = 0;
  for await (const batch of model.engine.submit({
    id: "warm-up",
    promptTokens: prompt.length > 0 ? prompt : [model.info.bosTokenId ?? 0],
    maxTokens: 2,
    sampling: { temperature: 0 },
  })) {
    tokens += batch.tokens.length;
  }
  if (tokens === 0) throw new Error("warm-up generation produced no tokens");
}
