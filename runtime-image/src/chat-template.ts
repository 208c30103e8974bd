import { Template } from "@huggingface/jinja";

export interface ChatMessage {
  role: string;
  content: string;
  name?: string;
}

export interface ChatTemplateContext {
  bosToken?: string;
  eosToken?: string;
}

/** A model's chat template (Hugging Face Jinja), parsed once at start-up. */
export class ChatTemplate {
  private readonly template: Template;

  constructor(
    source: string,
    private readonly context: ChatTemplateContext,
  ) {
    try {
      this.template = new Template(source);
    } catch (err) {
      throw new Error(`the engine's chat template does not parse: ${(err as Error).message}`);
    }
  }

  /** The prompt text for a conversation, ending with the assistant turn's opening. */
  render(messages: ChatMessage[]): string {
    return this.template.render({
      messages,
      add_generation_prompt: true,
      bos_token: this.context.bosToken ?? "",
      eos_token: this.context.eosToken ?? "",
    });
  }
}
