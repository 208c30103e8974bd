import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { buildTinyEngine, forTarget, storeEngine } from "./fixtures/engine-store.js";

const MAIN = fileURLToPath(new URL("../src/main.ts", import.meta.url));
let work: string;
let engine: Buffer;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "kiln-startup-"));
  engine = await buildTinyEngine(work);
}, 120_000);

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** Runs the real entrypoint as the pod would; resolves with its exit code and log lines. */
function runMain(
  env: Record<string, string>,
): Promise<{ code: number | null; lines: { level: number; msg: string }[] }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--import", "tsx", MAIN], {
      env: {
        PATH: process.env.PATH ?? "",
        HOST: "127.0.0.1",
        PORT: "0",
        KILN_CACHE_DIR: join(work, "cache"),
        ...env,
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout.on("data", (d: Buffer) => {
      out += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      out += d.toString();
    });
    const timer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.on("error", reject);
    // "close", not "exit": close fires once stdout and stderr have ended, so the last lines written
    // before process.exit (the fatal one) have been read.
    child.on("close", (code) => {
      clearTimeout(timer);
      const lines = out
        .split("\n")
        .filter((l) => l.startsWith("{"))
        .map((l) => JSON.parse(l) as { level: number; msg: string });
      resolve({ code, lines });
    });
  });
}

/** The one fatal line start-up ends with. */
function fatal(lines: { level: number; msg: string }[]): string {
  const found = lines.filter((l) => l.level === 60);
  expect(found).toHaveLength(1);
  return found[0]?.msg ?? "";
}

describe("runtime start-up failures end the process with one clear line and a non-zero exit", () => {
  test("wrong sha256", async () => {
    const stored = await storeEngine(join(work, "store"), engine);
    const { code, lines } = await runMain({
      KILN_ENGINE_URI: stored.uri,
      KILN_ENGINE_SHA256: "1".repeat(64),
    });
    expect(code).toBe(1);
    expect(fatal(lines)).toMatch(/describes sha256 [0-9a-f]{64} but this deployment expects 1{64}/);
  }, 60_000);

  test("missing manifest", async () => {
    const stored = await storeEngine(join(work, "store"), engine, { manifest: false });
    const { code, lines } = await runMain({ KILN_ENGINE_URI: stored.uri, KILN_ENGINE_SHA256: stored.sha256 });
    expect(code).toBe(1);
    expect(fatal(lines)).toMatch(/no manifest.json beside it/);
  }, 60_000);

  test("engine built for another target", async () => {
    const stored = await storeEngine(join(work, "store"), forTarget(engine, "cuda:sm_90:cuda12.4"));
    const { code, lines } = await runMain({ KILN_ENGINE_URI: stored.uri, KILN_ENGINE_SHA256: stored.sha256 });
    expect(code).toBe(1);
    expect(fatal(lines)).toMatch(/was built for target "cuda:sm_90:cuda12\.4_*" but this machine is "cpu:/);
  }, 60_000);

  test("bad configuration names the variable", async () => {
    const { code, lines } = await runMain({
      KILN_ENGINE_URI: "http://nope/engine.kiln",
      KILN_ENGINE_SHA256: "x",
    });
    expect(code).toBe(1);
    expect(fatal(lines)).toMatch(/bad configuration: KILN_ENGINE_URI must be an s3:\/\/ or file:\/\/ URI/);
  }, 60_000);
});
