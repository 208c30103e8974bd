import { describe, expect, test } from "vitest";
import { IncrementalDetokenizer } from "../src/detokenizer.js";
import { loadTokenizer } from "../src/tokenizer.js";
import { EOS_ID, tinyTokenizerJson } from "./fixtures/tokenizer.js";

const tokenizer = loadTokenizer(tinyTokenizerJson());

function streamOneByOne(ids: number[], context: number[] = []): string[] {
  const detok = new IncrementalDetokenizer(tokenizer, context);
  const pieces = ids.map((id) => detok.push([id]));
  pieces.push(detok.flush());
  return pieces;
}

describe("incremental detokenizer", () => {
  test("a 4-byte emoji split over 4 byte tokens appears once, whole, with its last byte", () => {
    const ids = tokenizer.encode("😀", false);
    expect(ids).toHaveLength(4);
    const pieces = streamOneByOne(ids);
    expect(pieces.slice(0, 3)).toEqual(["", "", ""]);
    expect(pieces[3]).toBe("😀");
  });

  test("mixed text with 2-, 3- and 4-byte characters never streams a replacement character", () => {
    const text = "hello wörld, ça va? 日本 😀 the end";
    const ids = tokenizer.encode(text, false);
    expect(ids.length).toBeGreaterThan([...text].length - 10);
    const pieces = streamOneByOne(ids);
    for (const piece of pieces) expect(piece).not.toContain("\uFFFD");
    expect(pieces.join("")).toBe(text);
  });

  test("batches of several tokens decode the same as one token at a time", () => {
    const text = "ça 😀 hello world";
    const ids = tokenizer.encode(text, false);
    const detok = new IncrementalDetokenizer(tokenizer);
    const out = [
      detok.push(ids.slice(0, 3)),
      detok.push(ids.slice(3, 7)),
      detok.push(ids.slice(7)),
      detok.flush(),
    ];
    expect(out.join("")).toBe(text);
  });

  test("the prompt's tail is context, not output, and special tokens such as EOS add no text", () => {
    const prompt = tokenizer.encode("hello", true);
    const ids = [...tokenizer.encode(" world", false), EOS_ID];
    expect(streamOneByOne(ids, prompt).join("")).toBe(" world");
  });

  test("a long stream keeps decoding correctly after its window is trimmed", () => {
    const text = "é".repeat(200);
    const pieces = streamOneByOne(tokenizer.encode(text, false));
    expect(pieces.join("")).toBe(text);
    for (const piece of pieces) expect(piece).not.toContain("\uFFFD");
  });

  test("a stream that ends inside a character flushes it as one replacement character", () => {
    const ids = tokenizer.encode("a😀", false);
    const detok = new IncrementalDetokenizer(tokenizer);
    expect(detok.push(ids.slice(0, 1))).toBe("a");
    expect(detok.push(ids.slice(1, 3))).toBe("");
    expect(detok.flush()).toBe("\uFFFD");
  });
});
