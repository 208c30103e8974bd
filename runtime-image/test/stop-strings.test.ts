import { describe, expect, test } from "vitest";
import { StopStringMatcher } from "../src/stop-strings.js";

function run(stops: string[], pieces: string[]) {
  const m = new StopStringMatcher(stops);
  const sent: string[] = [];
  let stopped = false;
  for (const piece of pieces) {
    const r = m.push(piece);
    sent.push(r.text);
    if (r.stopped) {
      stopped = true;
      break;
    }
  }
  if (!stopped) sent.push(m.flush());
  return { sent, stopped, text: sent.join("") };
}

describe("stop strings", () => {
  test("a stop string split over three tokens stops generation and none of it is sent", () => {
    const { sent, stopped, text } = run(["<|end|>"], ["Hello <|", "en", "d|> ignored"]);
    expect(stopped).toBe(true);
    expect(text).toBe("Hello ");
    // Nothing sent at any point is part of the stop string.
    for (const piece of sent) expect("<|end|>".includes(piece) && piece !== "").toBe(false);
    expect(sent).toEqual(["Hello ", "", ""]);
  });

  test("a tail that only looked like a stop string is released once it cannot be one", () => {
    const { sent, stopped, text } = run(["STOP"], ["one ST", "ART two"]);
    expect(stopped).toBe(false);
    expect(sent[0]).toBe("one ");
    expect(text).toBe("one START two");
  });

  test("text before the stop string in the same token is kept, text after it is dropped", () => {
    expect(run(["\n\n"], ["a", "b\n\nc"]).text).toBe("ab");
  });

  test("the earliest of several stop strings wins", () => {
    expect(run(["world", "lo"], ["hello world"]).text).toBe("hel");
  });

  test("a held-back partial match is flushed when generation ends without the stop string", () => {
    expect(run(["END"], ["the E", "N"])).toEqual({
      sent: ["the ", "", "EN"],
      stopped: false,
      text: "the EN",
    });
  });

  test("overlapping prefixes: 'aab' is found in 'aaab' split across tokens", () => {
    const r = run(["aab"], ["xa", "a", "ab!"]);
    expect(r.stopped).toBe(true);
    expect(r.text).toBe("xa");
  });

  test("without stop strings text passes straight through", () => {
    expect(run([], ["a", "b"]).sent).toEqual(["a", "b", ""]);
  });
});
