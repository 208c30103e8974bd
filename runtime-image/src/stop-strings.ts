/** What one piece of generated text turns into once stop strings are applied. */
export interface StopResult {
  /** Text safe to send now: never contains a stop string or the start of one that may still complete. */
  text: string;
  /** A stop string was found; nothing after it may be sent and generation must end. */
  stopped: boolean;
}

/**
 * Finds stop strings in detokenized text even when they arrive split over several tokens. The tail
 * that could be the start of a stop string is held back until the next piece proves it is or is not
 * one, so a streamed response never shows any part of a stop string.
 */
export class StopStringMatcher {
  private held = "";
  private done = false;
  private readonly longest: number;

  constructor(private readonly stops: readonly string[]) {
    this.longest = stops.reduce((m, s) => Math.max(m, s.length), 0);
  }

  push(piece: string): StopResult {
    if (this.done) return { text: "", stopped: true };
    if (this.stops.length === 0) return { text: piece, stopped: false };
    const text = this.held + piece;
    let first = -1;
    for (const stop of this.stops) {
      if (stop === "") continue;
      const at = text.indexOf(stop);
      if (at !== -1 && (first === -1 || at < first)) first = at;
    }
    if (first !== -1) {
      this.done = true;
      this.held = "";
      return { text: text.slice(0, first), stopped: true };
    }
    const keep = this.partialMatchLength(text);
    this.held = text.slice(text.length - keep);
    return { text: text.slice(0, text.length - keep), stopped: false };
  }

  /** The held-back tail once generation ended without a stop string: it was not one after all. */
  flush(): string {
    const rest = this.done ? "" : this.held;
    this.held = "";
    return rest;
  }

  /** Length of the longest suffix of `text` that is a proper prefix of some stop string. */
  private partialMatchLength(text: string): number {
    for (let len = Math.min(this.longest - 1, text.length); len > 0; len--) {
      const suffix = text.slice(text.length - len);
      if (this.stops.some((stop) => stop.length > len && stop.startsWith(suffix))) return len;
    }
    return 0;
  }
}
