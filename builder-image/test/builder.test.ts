import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { enginePaths, parseBuildResult, validateManifest } from "../../lib/manifest.js";
import { inspect } from "../../native/binding/index.js";
import { writeTinyLlama } from "../../test/fixtures/tiny-checkpoint.js";
import { EXIT } from "../src/errors.js";
import { runBuilder } from "./run-builder.js";
import { writeTinyTokenizer } from "./tiny-tokenizer.js";

let work: string;
let pvcRoot: string;

const keyOf = (name: string) => createHash("sha256").update(name).digest("hex");

function specFor(
  key: string,
  over: { source?: string; precision?: string; arch?: string; engine?: object } = {},
) {
  return {
    key,
    formatVersion: 1,
    model: { source: over.source ?? "pvc://models/tiny-llama", revision: "r1" },
    engine: {
      precision: over.precision ?? "bf16",
      maxBatchSize: 4,
      maxInputLen: 64,
      maxSeqLen: 128,
      tensorParallel: 1,
      kvCache: { pageSize: 16, dtype: "auto" },
      ...over.engine,
    },
    target: {
      product: over.arch && over.arch !== "cpu" ? "NVIDIA-H100-80GB-HBM3" : "cpu",
      arch: over.arch ?? "cpu",
    },
    toolchain: { version: "test-toolchain-1", builderImage: "kiln/builder:test" },
  };
}

function jobEnv(key: string, store: string, spec: object): Record<string, string> {
  return {
    KILN_ENGINE_KEY: key,
    KILN_BUILD_SPEC: JSON.stringify(spec),
    KILN_STORE_URI: store,
    KILN_PVC_ROOT: pvcRoot,
  };
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "kiln-builder-test-"));
  pvcRoot = join(work, "pvc");
  await writeTinyLlama(join(pvcRoot, "models", "tiny-llama"));
  await writeTinyLlama(join(pvcRoot, "models", "tiny-with-tokenizer"));
  await writeTinyTokenizer(join(pvcRoot, "models", "tiny-with-tokenizer"), 256);
  await mkdir(join(pvcRoot, "models", "empty"), { recursive: true });
  const gpt2 = join(pvcRoot, "models", "gpt2");
  await writeTinyLlama(gpt2);
  const config = JSON.parse(await readFile(join(gpt2, "config.json"), "utf8"));
  await writeFile(
    join(gpt2, "config.json"),
    JSON.stringify({ ...config, architectures: ["GPT2LMHeadModel"] }),
  );
});
afterAll(async () => rm(work, { recursive: true, force: true }));

// Each case runs the real entrypoint and compiler in a child process: seconds, not milliseconds.
describe("kiln-build build", { timeout: 120_000 }, () => {
  test("builds from pvc://, publishes engine then manifest, and reports the result as the Job's termination message", async () => {
    const key = keyOf("first");
    const storeDir = join(work, "store-1");
    const store = pathToFileURL(storeDir).href;
    const run = await runBuilder(jobEnv(key, store, specFor(key)), join(work, "run-1"));
    expect(run.stderr).toBe("");
    expect(run.code).toBe(EXIT.ok);

    const engineBytes = await readFile(join(storeDir, enginePaths(key).engine));
    const manifest = validateManifest(
      JSON.parse(await readFile(join(storeDir, enginePaths(key).manifest), "utf8")),
      key,
    );
    if (!manifest.ok) throw new Error(manifest.errors.join("; "));
    expect(manifest.value.sha256).toBe(createHash("sha256").update(engineBytes).digest("hex"));
    expect(manifest.value.sizeBytes).toBe(engineBytes.length);
    expect(manifest.value.toolchain.version).toBe("test-toolchain-1");
    expect(manifest.value.target).toMatchObject({ product: "cpu", arch: "cpu" });
    expect(manifest.value.source?.files.map((f) => f.path)).toEqual(["config.json", "model.safetensors"]);
    expect(manifest.value.tuning).toMatchObject({ autotuned: true });
    // The post-build benchmark ran on this machine (validateManifest checked every figure is
    // positive); timing relations between batch sizes are not asserted on a shared CPU.
    expect(manifest.value.benchmark).toMatchObject({
      device: expect.stringMatching(/^cpu:/),
      promptTokens: 32,
      outputTokens: 16,
      batch1: { batchSize: 1 },
      maxBatch: { batchSize: 4 },
    });
    expect(run.progress.find((p) => p.phase === "benchmark" && p.percent === 90)?.message).toMatch(
      /batch 1: [\d.]+ tok\/s/,
    );
    // The operator's copy of the build's progress: the last event, written before the builder exited.
    expect(JSON.parse(await readFile(join(storeDir, enginePaths(key).progress), "utf8"))).toMatchObject({
      phase: "done",
      percent: 100,
    });

    const result = parseBuildResult(run.termination);
    if (!result.ok) throw new Error(result.errors.join("; "));
    expect(result.value.sha256).toBe(manifest.value.sha256);
    expect(result.value.uri).toBe(pathToFileURL(join(storeDir, enginePaths(key).engine)).href);

    const phases = run.progress.map((p) => p.phase);
    expect(phases[0]).toBe("fetch");
    expect(phases).toContain("compile");
    expect(phases.at(-1)).toBe("done");
    const percents = run.progress.map((p) => p.percent);
    expect(percents).toEqual([...percents].sort((a, b) => a - b));
  });

  test("a second run for the same key finds the published engine and compiles nothing", async () => {
    const key = keyOf("idempotent");
    const store = pathToFileURL(join(work, "store-2")).href;
    const first = await runBuilder(jobEnv(key, store, specFor(key)), join(work, "run-2a"));
    expect(first.code).toBe(EXIT.ok);
    const again = await runBuilder(jobEnv(key, store, specFor(key)), join(work, "run-2b"));
    expect(again.code).toBe(EXIT.ok);
    expect(again.progress.map((p) => p.phase)).toEqual(["cached"]);
    expect(parseBuildResult(again.termination)).toEqual(parseBuildResult(first.termination));
  });

  test("fp8 tokenizes the built-in calibration set with the checkpoint's tokenizer", async () => {
    const key = keyOf("fp8");
    const storeDir = join(work, "store-3");
    const spec = specFor(key, { source: "pvc://models/tiny-with-tokenizer", precision: "fp8" });
    const run = await runBuilder(jobEnv(key, pathToFileURL(storeDir).href, spec), join(work, "run-3"));
    expect(run.stderr).toBe("");
    expect(run.code).toBe(EXIT.ok);
    expect(run.progress.find((p) => p.phase === "calibrate")?.message).toMatch(
      /tokenized \d+ calibration samples/,
    );
    expect(existsSync(join(storeDir, enginePaths(key).manifest))).toBe(true);
  });

  test("lmHeadPrecision fp8 reaches the compiler: the published engine's lm_head is E4M3", async () => {
    const key = keyOf("fp8-head");
    const storeDir = join(work, "store-3h");
    const spec = specFor(key, {
      source: "pvc://models/tiny-with-tokenizer",
      precision: "fp8",
      engine: { lmHeadPrecision: "fp8" },
    });
    const run = await runBuilder(jobEnv(key, pathToFileURL(storeDir).href, spec), join(work, "run-3h"));
    expect(run.stderr).toBe("");
    expect(run.code).toBe(EXIT.ok);
    const header = inspect(join(storeDir, enginePaths(key).engine)) as {
      quantization: { lm_head_dtype?: string; scales: Record<string, { input_scale: number }> };
    };
    expect(header.quantization.lm_head_dtype).toBe("f8e4m3");
    expect(header.quantization.scales["lm_head.weight"]?.input_scale).toBeGreaterThan(0);
  });

  test("an lmHeadPrecision other than fp8 fails permanently, naming the field", async () => {
    const key = keyOf("bad-head");
    const spec = specFor(key, { precision: "fp8", engine: { lmHeadPrecision: "bf16" } });
    const run = await runBuilder(
      jobEnv(key, pathToFileURL(join(work, "store-3b")).href, spec),
      join(work, "run-3b"),
    );
    expect(run.code).toBe(EXIT.permanent);
    expect(JSON.parse(run.termination).error).toMatch(
      /spec\.engine\.lmHeadPrecision must be "fp8" or absent/,
    );
  });

  test("fp8 without a tokenizer.json fails permanently, naming the file", async () => {
    const key = keyOf("fp8-no-tokenizer");
    const storeDir = join(work, "store-4");
    const run = await runBuilder(
      jobEnv(key, pathToFileURL(storeDir).href, specFor(key, { precision: "fp8" })),
      join(work, "run-4"),
    );
    expect(run.code).toBe(EXIT.permanent);
    expect(JSON.parse(run.termination)).toMatchObject({
      permanent: true,
      error: expect.stringMatching(/tokenizer\.json/),
    });
    expect(existsSync(join(storeDir, enginePaths(key).manifest))).toBe(false);
  });

  test("a spec missing a field fails permanently and names the field", async () => {
    const key = keyOf("bad-spec");
    const spec = specFor(key, { engine: { maxSeqLen: undefined } });
    const run = await runBuilder(
      jobEnv(key, pathToFileURL(join(work, "store-5")).href, spec),
      join(work, "run-5"),
    );
    expect(run.code).toBe(EXIT.permanent);
    expect(JSON.parse(run.termination).error).toMatch(/spec\.engine\.maxSeqLen must be a positive integer/);
  });

  test("a checkpoint folder without config.json fails permanently", async () => {
    const key = keyOf("no-config");
    const spec = specFor(key, { source: "pvc://models/empty" });
    const run = await runBuilder(
      jobEnv(key, pathToFileURL(join(work, "store-6")).href, spec),
      join(work, "run-6"),
    );
    expect(run.code).toBe(EXIT.permanent);
    expect(JSON.parse(run.termination).error).toMatch(/no config\.json/);
  });

  test("an unsupported architecture fails permanently, naming it, and publishes nothing", async () => {
    const key = keyOf("gpt2");
    const storeDir = join(work, "store-gpt2");
    const spec = specFor(key, { source: "pvc://models/gpt2" });
    const run = await runBuilder(jobEnv(key, pathToFileURL(storeDir).href, spec), join(work, "run-gpt2"));
    expect(run.code).toBe(EXIT.permanent);
    expect(JSON.parse(run.termination)).toMatchObject({
      permanent: true,
      error: expect.stringMatching(/GPT2LMHeadModel/),
    });
    expect(existsSync(join(storeDir, enginePaths(key).engine))).toBe(false);
  });

  test("an engine built for the wrong target is never published", async () => {
    const key = keyOf("wrong-target");
    const storeDir = join(work, "store-7");
    const run = await runBuilder(
      jobEnv(key, pathToFileURL(storeDir).href, specFor(key, { arch: "sm_90" })),
      join(work, "run-7"),
    );
    expect(run.code).toBe(EXIT.permanent);
    expect(JSON.parse(run.termination).error).toMatch(
      /targets NVIDIA-H100-80GB-HBM3 \(sm_90\) but this builder produced an engine for cpu:/,
    );
    expect(existsSync(join(storeDir, enginePaths(key).engine))).toBe(false);
    expect(existsSync(join(storeDir, enginePaths(key).manifest))).toBe(false);
  });

  test("an unreachable object store is a retryable failure", async () => {
    const key = keyOf("store-down");
    const env = {
      ...jobEnv(key, "s3://engines/kiln", specFor(key)),
      KILN_STORE_ENDPOINT: "http://127.0.0.1:9",
    };
    const run = await runBuilder(
      { ...env, AWS_ACCESS_KEY_ID: "x", AWS_SECRET_ACCESS_KEY: "y", AWS_MAX_ATTEMPTS: "1" },
      join(work, "run-8"),
    );
    expect(run.code).toBe(EXIT.retryable);
    expect(JSON.parse(run.termination)).toMatchObject({ permanent: false });
  });
});
