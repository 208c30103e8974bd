import { describe, expect, test } from "vitest";
import { ChatTemplate } from "../src/chat-template.js";
import { TINY_CHAT_TEMPLATE } from "./fixtures/tokenizer.js";

// The shape of the ChatML templates Qwen and SmolLM ship.
const CHATML =
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

describe("chat template", () => {
  test("renders the conversation with bos_token and the assistant opening", () => {
    const t = new ChatTemplate(TINY_CHAT_TEMPLATE, { bosToken: "<s>", eosToken: "</s>" });
    expect(
      t.render([
        { role: "system", content: "be brief" },
        { role: "user", content: "hi" },
      ]),
    ).toBe("<s>system: be brief\nuser: hi\nassistant:");
  });

  test("renders a ChatML template as transformers does", () => {
    const t = new ChatTemplate(CHATML, {});
    expect(t.render([{ role: "user", content: "2+2?" }])).toBe(
      "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n",
    );
  });

  test("a template that raises (as Llama 2's does for roles out of order) throws with its message", () => {
    const strict =
      "{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}" +
      "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{{ m['content'] }}{% endfor %}";
    const t = new ChatTemplate(strict, {});
    expect(() => t.render([{ role: "assistant", content: "x" }])).toThrow(/alternate/);
  });

  test("a template that does not parse is refused at load with a clear message", () => {
    expect(() => new ChatTemplate("{% for %}", {})).toThrow(/chat template does not parse/);
  });
});
