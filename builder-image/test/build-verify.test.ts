import { createHash } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { afterAll, beforeAll, expect, test, vi } from "vitest";
import { sha256File } from "../../lib/file-sha256.js";
import { enginePaths } from "../../lib/manifest.js";
import { writeTinyLlama } from "../../test/fixtures/tiny-checkpoint.js";
import { runBuild } from "../src/build-engine.js";
import { fetchEnvFrom } from "../src/fetch/index.js";

const writer = vi.hoisted(() => ({ sha256: "" }));

// The disk changing between the writer's digest and the verify step cannot be caused from outside
// the process, so the real compiler runs and then one byte of its output is flipped, as a bad disk
// would; runBuild and its check are the production code.
vi.mock("../../native/binding/index.js", async (importOriginal) => {
  const real = await importOriginal<typeof import("../../native/binding/index.js")>();
  const { open } = await import("node:fs/promises");
  return {
    ...real,
    build: async (...args: Parameters<typeof real.build>) => {
      const built = await real.build(...args);
      writer.sha256 = built.sha256;
      const file = await open(built.path, "r+");
      try {
        const last = Buffer.alloc(1);
        await file.read(last, 0, 1, built.bytes - 1);
        last.writeUInt8(last.readUInt8(0) ^ 0xff);
        await file.write(last, 0, 1, built.bytes - 1);
      } finally {
        await file.close();
      }
      return built;
    },
  };
});

let work: string;
beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "kiln-build-verify-"));
  await writeTinyLlama(join(work, "pvc", "models", "tiny-llama"));
});
afterAll(async () => rm(work, { recursive: true, force: true }));

// The real compiler runs in-process: seconds, not milliseconds.
test("an engine whose bytes on disk differ from the writer's digest fails the build, naming the file and both digests, and publishes nothing", {
  timeout: 120_000,
}, async () => {
  const key = createHash("sha256").update("verify-mismatch").digest("hex");
  const storeDir = join(work, "store");
  const workDir = join(work, "run");
  const spec = {
    model: { source: "pvc://models/tiny-llama", revision: "r1" },
    engine: { precision: "bf16", maxBatchSize: 4, maxInputLen: 64, maxSeqLen: 128 },
    target: { product: "cpu", arch: "cpu" },
  };
  const failure = await runBuild({
    job: { key, store: { uri: pathToFileURL(storeDir).href }, ...spec, toolchainVersion: "test", spec },
    fetchEnv: fetchEnvFrom({ KILN_PVC_ROOT: join(work, "pvc") }),
    workDir,
    terminationPath: join(work, "termination"),
    progress: () => undefined,
    signal: new AbortController().signal,
  }).then(
    () => undefined,
    (err: unknown) => err,
  );

  const enginePath = join(workDir, "engine.kiln");
  const onDisk = await sha256File(enginePath);
  expect(failure).toBeInstanceOf(Error);
  expect((failure as Error).message).toBe(
    `engine ${enginePath}: the file on disk hashes to ${onDisk}, the build wrote ${writer.sha256}`,
  );
  expect(existsSync(join(storeDir, enginePaths(key).engine))).toBe(false);
  expect(existsSync(join(storeDir, enginePaths(key).manifest))).toBe(false);
});
