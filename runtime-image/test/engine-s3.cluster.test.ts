import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { PutObjectCommand } from "@aws-sdk/client-s3";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { MANIFEST_VERSION } from "../../lib/manifest.js";
import { testS3, testS3Client } from "../../test/cluster/env.js";
import { fetchEngine } from "../src/engine-fetch.js";
import { localTargetFingerprint } from "../src/engine-loader.js";
import { buildTinyEngine, sha256 } from "./fixtures/engine-store.js";

// The engine served from the test cluster's real S3 server, as the operator's pods get it.
const MAIN = fileURLToPath(new URL("../src/main.ts", import.meta.url));
const log = pino({ level: "silent" });
const s3 = testS3();
const client = testS3Client();
const prefix = `runtime-${process.pid}-${Date.now()}`;
const credentials = { AWS_ACCESS_KEY_ID: s3.accessKeyId, AWS_SECRET_ACCESS_KEY: s3.secretAccessKey };
let work: string;
let engine: Buffer;
let uri: string;

async function publish(key: string, bytes: Buffer, withManifest = true): Promise<string> {
  const dir = `${prefix}/engines/${key}`;
  await client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: `${dir}/engine.kiln`, Body: bytes }));
  if (withManifest) {
    const manifest = {
      manifestVersion: MANIFEST_VERSION,
      key,
      sha256: sha256(bytes),
      sizeBytes: bytes.length,
      toolchain: { version: "test" },
      target: { product: "cpu", arch: "x86_64" },
      inputs: {},
      builtAt: new Date().toISOString(),
    };
    await client.send(
      new PutObjectCommand({
        Bucket: s3.bucket,
        Key: `${dir}/manifest.json`,
        Body: JSON.stringify(manifest),
      }),
    );
  }
  return `s3://${s3.bucket}/${dir}/engine.kiln`;
}

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "kiln-s3-"));
  engine = await buildTinyEngine(work);
  uri = await publish(sha256(Buffer.from("good")), engine);
  // The SDK's default credential chain reads these, as in a pod with the store's Secret as env.
  Object.assign(process.env, credentials);
}, 120_000);

afterAll(async () => {
  client.destroy();
  await rm(work, { recursive: true, force: true });
});

const source = async (engineUri: string, sha: string) => ({
  uri: engineUri,
  sha256: sha,
  cacheDir: await mkdtemp(join(work, "cache-")),
  store: { endpoint: s3.endpoint, region: s3.region },
  localFingerprint: localTargetFingerprint(),
  attempts: 2,
});

describe("engine fetch from the real S3 server", () => {
  test("downloads and verifies the engine", async () => {
    const fetched = await fetchEngine(await source(uri, sha256(engine)), log);
    expect(sha256(await readFile(fetched.path))).toBe(sha256(engine));
    expect(fetched.header.format).toBe("kiln-engine");
  });

  test("resumes a partial download with a ranged GET", async () => {
    const src = await source(uri, sha256(engine));
    await writeFile(join(src.cacheDir, `${src.sha256}.kiln.part`), engine.subarray(0, 1000));
    const fetched = await fetchEngine(src, log);
    expect(sha256(await readFile(fetched.path))).toBe(sha256(engine));
  });

  test("a missing manifest in the bucket is refused", async () => {
    const bare = await publish(sha256(Buffer.from("bare")), engine, false);
    await expect(fetchEngine(await source(bare, sha256(engine)), log)).rejects.toThrow(
      /no manifest.json beside it/,
    );
  });
});

describe("the entrypoint with an s3:// engine", () => {
  test("wrong sha256 ends start-up with one fatal line and exit 1; the right one serves a completion", async () => {
    const run = (sha: string, onReady?: (url: string) => Promise<void>) =>
      new Promise<{ code: number | null; output: string }>((resolve, reject) => {
        const child = spawn(process.execPath, ["--import", "tsx", MAIN], {
          env: {
            PATH: process.env.PATH ?? "",
            HOST: "127.0.0.1",
            PORT: "0",
            KILN_CACHE_DIR: join(work, `main-${sha.slice(0, 8)}`),
            KILN_ENGINE_URI: uri,
            KILN_ENGINE_SHA256: sha,
            KILN_MODEL_NAME: "tiny",
            KILN_STORE_ENDPOINT: s3.endpoint,
            KILN_STORE_REGION: s3.region,
            ...credentials,
          },
          stdio: ["ignore", "pipe", "inherit"],
        });
        let output = "";
        child.stdout.on("data", (d: Buffer) => {
          output += d.toString();
          const port = /listening at http:\/\/127\.0\.0\.1:(\d+)/.exec(output)?.[1];
          if (onReady && port && /"msg":"ready"/.test(output)) {
            const ready = onReady;
            onReady = undefined;
            ready(`http://127.0.0.1:${port}`).then(() => child.kill("SIGTERM"), reject);
          }
        });
        child.on("close", (code) => resolve({ code, output })); // after stdout ended: the fatal line read
      });

    const wrong = await run("2".repeat(64));
    expect(wrong.code).toBe(1);
    expect(wrong.output).toMatch(/"level":60.*but this deployment expects 2{64}/);

    let text: string | undefined;
    const good = await run(sha256(engine), async (url) => {
      const res = await fetch(`${url}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "tiny", prompt: "hello", max_tokens: 4, temperature: 0 }),
      });
      text = ((await res.json()) as { choices: { text: string }[] }).choices[0]?.text;
    });
    expect(good.code).toBe(0);
    expect(typeof text).toBe("string");
  }, 120_000);
});
