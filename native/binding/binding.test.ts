import { createHash } from "node:crypto";
import { existsSync, readdirSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { writeTinyLlama } from "../../test/fixtures/tiny-checkpoint.js";
import {
  BuildCancelledError,
  BuildInputError,
  type BuildProgress,
  build,
  inspect,
  nativeVersion,
} from "./index.js";

let work: string;
let modelDir: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "kiln-binding-"));
  modelDir = join(work, "tiny-llama");
  await writeTinyLlama(modelDir);
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe("native binding: build", () => {
  test("builds an engine off the JS thread, streaming ordered progress, and reports the file's real sha256", async () => {
    const outPath = join(work, "fp32.kiln");
    const events: BuildProgress[] = [];
    const result = await build(
      { modelDir, outPath, precision: "fp32", maxSeqLen: 128, autotune: false, toolchainVersion: "test-1" },
      { onProgress: (p) => events.push(p) },
    );
    const bytes = await readFile(outPath);
    expect(result.path).toBe(outPath);
    expect(result.bytes).toBe(bytes.length);
    expect(result.sha256).toBe(createHash("sha256").update(bytes).digest("hex"));
    expect(events.length).toBeGreaterThan(2);
    expect(events[0]?.phase).toBe("load");
    const percents = events.map((e) => e.percent);
    expect(percents).toEqual([...percents].sort((a, b) => a - b));
    expect(new Set(events.map((e) => e.phase))).toContain("write");
  });

  test("inspect returns the header the build wrote", async () => {
    const outPath = join(work, "bf16.kiln");
    await build({
      modelDir,
      outPath,
      precision: "bf16",
      maxSeqLen: 128,
      autotune: false,
      toolchainVersion: "tc-9",
    });
    const header = inspect(outPath);
    expect(JSON.stringify(header)).toContain("bf16");
    expect(JSON.stringify(header)).toContain("tc-9");
  });

  test("an abort during the build rejects with BuildCancelledError and leaves no engine behind", async () => {
    // The abort comes from the first progress event, on the JS thread; a loaded machine may finish
    // the whole (~0.5 s) build before that thread runs it. Such a run shows nothing: its engine is
    // removed and the build runs again, and the assertions are about a run the abort reached.
    const outPath = join(work, "cancelled.kiln");
    let outcome: unknown = "built";
    for (let attempt = 0; attempt < 5 && outcome === "built"; attempt++) {
      await rm(outPath, { force: true });
      const controller = new AbortController();
      outcome = await build(
        { modelDir, outPath, precision: "fp32", maxSeqLen: 128, autotune: true },
        { signal: controller.signal, onProgress: () => controller.abort() },
      ).then(
        () => "built",
        (error: unknown) => error,
      );
    }
    expect(outcome).toBeInstanceOf(BuildCancelledError);
    expect(existsSync(outPath)).toBe(false);
    expect(readdirSync(work).filter((f) => f.startsWith("cancelled"))).toEqual([]);
  });

  test("an already-aborted signal never starts a build", async () => {
    const controller = new AbortController();
    controller.abort();
    const outPath = join(work, "never.kiln");
    await expect(
      build({ modelDir, outPath, precision: "fp32" }, { signal: controller.signal }),
    ).rejects.toBeInstanceOf(BuildCancelledError);
    expect(existsSync(outPath)).toBe(false);
  });

  test("bad options are refused naming the field", async () => {
    const outPath = join(work, "bad.kiln");
    expect(() => build({ modelDir: "", outPath, precision: "fp32" })).toThrow(
      /'modelDir' must be a non-empty string/,
    );
    expect(() => build({ modelDir, outPath, precision: "int3" as "fp32" })).toThrow(/'precision'/);
    expect(() => build({ modelDir, outPath, precision: "fp32", maxSeqLen: -4 })).toThrow(/'maxSeqLen'/);
  });

  test("an unsupported architecture is a BuildInputError (no retry can help) naming it", async () => {
    const gpt2 = join(work, "gpt2");
    await writeTinyLlama(gpt2);
    const config = JSON.parse(await readFile(join(gpt2, "config.json"), "utf8"));
    await writeFile(
      join(gpt2, "config.json"),
      JSON.stringify({ ...config, architectures: ["GPT2LMHeadModel"] }),
    );
    const failed = build({ modelDir: gpt2, outPath: join(work, "gpt2.kiln"), precision: "fp32" });
    await expect(failed).rejects.toBeInstanceOf(BuildInputError);
    await expect(failed).rejects.toThrow(/GPT2LMHeadModel/);
  });

  test("an output the OS refuses to create is a plain Error (the machine's, maybe retryable), not BuildInputError", async () => {
    const failed = build({ modelDir, outPath: join(work, "no-such-dir", "x.kiln"), precision: "fp32" });
    await expect(failed).rejects.toThrow(/cannot create/);
    await expect(failed).rejects.not.toBeInstanceOf(BuildInputError);
  });

  test("a missing checkpoint folder fails the build with the path in the message", async () => {
    const missing = join(work, "no-such-model");
    await expect(
      build({ modelDir: missing, outPath: join(work, "x.kiln"), precision: "fp32" }),
    ).rejects.toThrow(/no-such-model/);
  });
});

describe("native binding: inspect", () => {
  test("a truncated engine file is refused with an error, not a crash", async () => {
    const good = join(work, "whole.kiln");
    await build({ modelDir, outPath: good, precision: "fp32", maxSeqLen: 128, autotune: false });
    const bytes = await readFile(good);
    const truncated = join(work, "truncated.kiln");
    await writeFile(truncated, bytes.subarray(0, Math.floor(bytes.length / 2)));
    expect(() => inspect(truncated)).toThrow(/truncated|size|bounds|short/i);
    expect(() => inspect(truncated, { verifySections: false })).toThrow(/truncated|size|bounds|short/i);
  });

  test("verifySections: false reads past a corrupted section (its caller hashed the file), the default does not", async () => {
    const good = join(work, "sections.kiln");
    await build({ modelDir, outPath: good, precision: "fp32", maxSeqLen: 128, autotune: false });
    const bytes = Buffer.from(await readFile(good));
    bytes.writeUInt8(bytes.readUInt8(bytes.length - 1) ^ 0xff, bytes.length - 1);
    const flipped = join(work, "sections-flipped.kiln");
    await writeFile(flipped, bytes);
    expect(() => inspect(flipped)).toThrow(/sha256 mismatch/);
    expect(inspect(flipped, { verifySections: false })).toEqual(inspect(good));
  });

  test("the addon reports the compiler version it records in engines", () => {
    expect(nativeVersion()).toMatch(/^\d+\.\d+\.\d+/);
  });
});
