// The runtime pod starting while the object store is down: the engine fetch retries with backoff
// and succeeds once the store answers again, or, when it never does, fails start-up with one line
// that names the URI and the attempts. The outage is a TcpGate in front of the shared S3 server.
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PutObjectCommand } from "@aws-sdk/client-s3";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { MANIFEST_VERSION } from "../../lib/manifest.js";
import { type EngineSource, fetchEngine } from "../../runtime-image/src/engine-fetch.js";
import { localTargetFingerprint } from "../../runtime-image/src/engine-loader.js";
import { buildTinyEngine, sha256 } from "../../runtime-image/test/fixtures/engine-store.js";
import { testS3, testS3Client } from "../cluster/env.js";
import { TcpGate } from "./tcp-gate.js";

const s3 = testS3();
const client = testS3Client();
const gate = new TcpGate(new URL(s3.endpoint).hostname, Number(new URL(s3.endpoint).port));
let work: string;
let engine: Buffer;
let uri: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "kiln-faults-runtime-"));
  engine = await buildTinyEngine(work);
  const key = sha256(Buffer.from(`faults-${Date.now()}`));
  const dir = `faults-runtime/engines/${key}`;
  await client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: `${dir}/engine.kiln`, Body: engine }));
  await client.send(
    new PutObjectCommand({
      Bucket: s3.bucket,
      Key: `${dir}/manifest.json`,
      Body: JSON.stringify({
        manifestVersion: MANIFEST_VERSION,
        key,
        sha256: sha256(engine),
        sizeBytes: engine.length,
        toolchain: { version: "test" },
        target: { product: "cpu", arch: "x86_64" },
        inputs: {},
        builtAt: new Date().toISOString(),
      }),
    }),
  );
  uri = `s3://${s3.bucket}/${dir}/engine.kiln`;
  Object.assign(process.env, {
    AWS_ACCESS_KEY_ID: s3.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3.secretAccessKey,
  });
  await gate.open();
  await gate.close();
}, 120_000);

afterAll(async () => {
  await gate.close();
  client.destroy();
  await rm(work, { recursive: true, force: true });
});

const source = async (attempts: number): Promise<EngineSource> => ({
  uri,
  sha256: sha256(engine),
  cacheDir: await mkdtemp(join(work, "cache-")),
  store: { endpoint: gate.url, region: s3.region },
  localFingerprint: localTargetFingerprint(),
  attempts,
});

describe("faults: object store down while a runtime pod starts", () => {
  it("retries the engine fetch and succeeds once the store is back", async () => {
    const warnings: string[] = [];
    // The store comes back after the first retry is logged: the fetch must still be trying.
    const log = pino(
      { level: "warn" },
      {
        write: (line: string) => {
          warnings.push(line);
          if (warnings.length === 1) void gate.open();
        },
      },
    );
    const fetched = await fetchEngine(await source(5), log);
    expect(sha256(await readFile(fetched.path))).toBe(sha256(engine));
    expect(warnings[0]).toContain("object store unreachable; retrying");
    await gate.close();
  });

  it("fails start-up clearly once its attempts are spent", async () => {
    await expect(fetchEngine(await source(2), pino({ level: "silent" }))).rejects.toThrow(
      new RegExp(
        `engine ${uri.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: cannot read .*manifest.json after 2 attempts`,
      ),
    );
  });
});
