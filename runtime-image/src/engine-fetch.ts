import { createHash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, rename, rm, stat, truncate } from "node:fs/promises";
import { join } from "node:path";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { fileURLToPath } from "node:url";
import { GetObjectCommand, S3Client } from "@aws-sdk/client-s3";
import type { Logger } from "pino";
import { type EngineManifest, validateManifest } from "../../lib/manifest.js";
import { openObjectStore } from "../../lib/object-store.js";
import { inspect } from "../../native/binding/index.js";

/** A start-up failure with the one line that explains it; main logs it and exits non-zero. */
export class StartupError extends Error {
  override readonly name = "StartupError";
}

export interface EngineSource {
  /** `s3://bucket/.../engine.kiln` or `file:///.../engine.kiln`; manifest.json lies beside it. */
  uri: string;
  sha256: string;
  /** Engine key the manifest must carry; by default the key folder of the URI. */
  key?: string;
  cacheDir: string;
  store: { endpoint?: string; region?: string };
  /** This machine's target fingerprint; an engine built for another target is refused. */
  localFingerprint: string;
  /** Download attempts (each resumes where the last one stopped). */
  attempts?: number;
}

export interface FetchedEngine {
  path: string;
  manifest: EngineManifest;
  header: Record<string, unknown>;
}

/** Fetches, verifies and checks the engine named by `source`; every failure is a StartupError. */
export async function fetchEngine(source: EngineSource, log: Logger): Promise<FetchedEngine> {
  const slash = source.uri.lastIndexOf("/");
  const dirUri = source.uri.slice(0, slash);
  const fileName = source.uri.slice(slash + 1);
  const manifest = await readManifest(source, dirUri, log);
  if (manifest.sha256 !== source.sha256) {
    throw new StartupError(
      `engine ${source.uri}: manifest.json describes sha256 ${manifest.sha256} but this deployment expects ${source.sha256}`,
    );
  }
  const path = join(source.cacheDir, `${source.sha256}.kiln`);
  await mkdir(source.cacheDir, { recursive: true });
  const opener = rangeOpener(source, dirUri, fileName);
  await downloadVerified(opener, path, manifest.sizeBytes, source, log);

  let header: Record<string, unknown>;
  try {
    header = inspect(path);
  } catch (err) {
    throw new StartupError(`engine ${source.uri}: not a valid engine file: ${(err as Error).message}`);
  }
  const target = header.target as { fingerprint?: unknown } | undefined;
  const builtFor = typeof target?.fingerprint === "string" ? target.fingerprint : "<missing>";
  if (builtFor !== source.localFingerprint) {
    throw new StartupError(
      `engine ${source.uri} was built for target "${builtFor}" but this machine is "${source.localFingerprint}"; build an engine for this target`,
    );
  }
  return { path, manifest, header };
}

/** Wait before download attempt `attempt + 1`: exponential, capped so a pod keeps trying often. */
const retryDelayMs = (attempt: number) => Math.min(8000, 250 * 2 ** attempt);

async function readManifest(source: EngineSource, dirUri: string, log: Logger): Promise<EngineManifest> {
  const manifestUri = `${dirUri}/manifest.json`;
  const attempts = source.attempts ?? 5;
  const store = openObjectStore({ uri: dirUri, ...source.store });
  let body: Buffer | undefined;
  // An unreachable store (restarting, a network blip) is retried like an interrupted download; a
  // missing manifest is an answer, not an outage, and is not.
  for (let attempt = 1; ; attempt++) {
    try {
      body = await store.get("manifest.json");
      break;
    } catch (err) {
      if (attempt >= attempts) {
        throw new StartupError(
          `engine ${source.uri}: cannot read ${manifestUri} after ${attempts} attempts: ${(err as Error).message}`,
        );
      }
      log.warn({ attempt, err: (err as Error).message }, "object store unreachable; retrying");
      await new Promise((resolve) => setTimeout(resolve, retryDelayMs(attempt)));
    }
  }
  if (body === undefined) {
    throw new StartupError(
      `engine ${source.uri}: no manifest.json beside it (${manifestUri}); an engine exists only once its build wrote the manifest`,
    );
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString("utf8"));
  } catch (err) {
    throw new StartupError(`engine ${source.uri}: ${manifestUri} is not JSON: ${(err as Error).message}`);
  }
  const folder = dirUri.slice(dirUri.lastIndexOf("/") + 1);
  const key = source.key ?? folder;
  const checked = validateManifest(parsed, key);
  if (!checked.ok)
    throw new StartupError(`engine ${source.uri}: ${manifestUri} is invalid: ${checked.errors.join("; ")}`);
  return checked.value;
}

/** Opens the engine's bytes from `offset` to the end. */
type RangeOpener = (offset: number) => Promise<Readable>;

function rangeOpener(source: EngineSource, dirUri: string, fileName: string): RangeOpener {
  const url = new URL(source.uri);
  if (url.protocol === "file:") {
    const path = fileURLToPath(url);
    return async (offset) => createReadStream(path, { start: offset });
  }
  const bucket = url.hostname;
  const key = decodeURIComponent(url.pathname.replace(/^\/+/, ""));
  const client = new S3Client({
    region: source.store.region ?? "us-east-1",
    ...(source.store.endpoint ? { endpoint: source.store.endpoint, forcePathStyle: true } : {}),
  });
  return async (offset) => {
    const out = await client.send(
      new GetObjectCommand({
        Bucket: bucket,
        Key: key,
        ...(offset > 0 ? { Range: `bytes=${offset}-` } : {}),
      }),
    );
    if (!out.Body) throw new Error(`s3 GET ${dirUri}/${fileName} returned no body`);
    return out.Body as Readable;
  };
}

async function sizeOf(path: string): Promise<number | undefined> {
  try {
    return (await stat(path)).size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw err;
  }
}

async function sha256Of(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

/**
 * Downloads into `<path>.part`, resuming from its current size after a failed attempt (or a
 * restarted pod), verifies the sha256 and only then renames it into place. A cached file is reused
 * when its sha256 still matches.
 */
async function downloadVerified(
  open: RangeOpener,
  path: string,
  size: number,
  source: EngineSource,
  log: Logger,
): Promise<void> {
  if ((await sizeOf(path)) !== undefined) {
    if ((await sha256Of(path)) === source.sha256) {
      log.info({ path }, "engine found in the local cache");
      return;
    }
    log.warn({ path }, "cached engine does not match its sha256; downloading it again");
    await rm(path, { force: true });
  }
  const part = `${path}.part`;
  const attempts = source.attempts ?? 5;
  for (let attempt = 1; ; attempt++) {
    let offset = (await sizeOf(part)) ?? 0;
    if (offset > size) {
      await truncate(part, 0);
      offset = 0;
    }
    if (offset === size) break;
    try {
      if (offset > 0) log.info({ offset, size }, "resuming engine download");
      let received = offset;
      let nextReport = 0.1;
      await pipeline(
        await open(offset),
        async function* (chunks: AsyncIterable<Buffer>) {
          for await (const chunk of chunks) {
            received += chunk.length;
            if (received / size >= nextReport) {
              log.info({ percent: Math.floor((received / size) * 100) }, "downloading engine");
              nextReport += 0.1;
            }
            yield chunk;
          }
        },
        createWriteStream(part, { flags: "a" }),
      );
      if (received !== size) throw new Error(`got ${received} of ${size} bytes`);
      break;
    } catch (err) {
      if (attempt >= attempts) {
        throw new StartupError(
          `engine ${source.uri}: download failed after ${attempts} attempts: ${(err as Error).message}`,
        );
      }
      log.warn({ attempt, err: (err as Error).message }, "engine download interrupted; resuming");
      await new Promise((resolve) => setTimeout(resolve, retryDelayMs(attempt)));
    }
  }
  const actual = await sha256Of(part);
  if (actual !== source.sha256) {
    await rm(part, { force: true });
    throw new StartupError(
      `engine ${source.uri}: sha256 mismatch: expected ${source.sha256}, downloaded ${actual}`,
    );
  }
  await rename(part, path);
}
