import { randomBytes } from "node:crypto";
import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { CreateBucketCommand, S3Client } from "@aws-sdk/client-s3";
import { binaryPath } from "./binaries.js";
import { type StartedProcess, startProcess } from "./processes.js";
import { answers200, waitUntil } from "./wait.js";

/** Where and how tests reach the S3 server, in the shape S3 clients take. */
export interface S3Endpoint {
  endpoint: string;
  bucket: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
}

/** An S3 client for the test server; path-style because the bucket is not a DNS name on loopback. */
export function s3ClientFor(s3: S3Endpoint): S3Client {
  return new S3Client({
    endpoint: s3.endpoint,
    region: s3.region,
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
  });
}

/**
 * Starts versitygw with its posix backend (objects are plain files under <runDir>/s3, metadata in
 * xattrs) on a loopback port with fresh root credentials. `ready()` waits for its health endpoint
 * and creates the bucket through the S3 API.
 */
export async function startS3Server(options: {
  runDir: string;
  logDir: string;
  port: number;
  bucket: string;
}): Promise<{
  process: StartedProcess;
  s3: S3Endpoint;
  ready(wait: { timeoutMs: number; abort: Promise<string> }): Promise<void>;
}> {
  const root = join(options.runDir, "s3");
  await mkdir(root, { recursive: true });
  const s3: S3Endpoint = {
    endpoint: `http://127.0.0.1:${options.port}`,
    bucket: options.bucket,
    accessKeyId: `kiln${randomBytes(8).toString("hex")}`,
    secretAccessKey: randomBytes(24).toString("base64url"),
    region: "us-east-1",
  };
  const proc = startProcess(
    "versitygw",
    binaryPath("versitygw"),
    [
      "--port",
      `127.0.0.1:${options.port}`,
      "--region",
      s3.region,
      "--health",
      "/health",
      "--quiet",
      "posix",
      root,
    ],
    {
      logDir: options.logDir,
      // Credentials go through the environment so they do not show up in `ps`.
      env: { ...process.env, ROOT_ACCESS_KEY_ID: s3.accessKeyId, ROOT_SECRET_ACCESS_KEY: s3.secretAccessKey },
    },
  );
  const ready = async (wait: { timeoutMs: number; abort: Promise<string> }) => {
    await waitUntil("S3 server (versitygw) healthy", answers200(`${s3.endpoint}/health`), {
      timeoutMs: wait.timeoutMs,
      abort: Promise.race([wait.abort, proc.exited]),
    });
    const client = s3ClientFor(s3);
    try {
      await client.send(new CreateBucketCommand({ Bucket: s3.bucket }));
    } catch (err) {
      throw new Error(`creating bucket ${s3.bucket} on ${s3.endpoint}: ${(err as Error).message}`);
    } finally {
      client.destroy();
    }
  };
  return { process: proc, s3, ready };
}
