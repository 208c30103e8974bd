import { mkdir, rename, rm } from "node:fs/promises";
import { join } from "node:path";
import type { Logger } from "pino";
import { sha256File } from "../../lib/file-sha256.js";
import { type EngineManifest, validateManifest } from "../../lib/manifest.js";
import { type ObjectStore, openObjectStore } from "../../lib/object-store.js";
import { downloadRanges, type RangeOpener, sizeOf } from "../../lib/ranged-download.js";
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
  /** Ranged GETs in flight at once and their size (lib/ranged-download.ts has the defaults). */
  concurrency?: number;
  chunkBytes?: number;
}

export interface FetchedEngine {
  /** The engine file, whose sha256 matched the deployment's, which equals manifest.sha256. */
  path: string;
  manifest: EngineManifest;
  header: Record<string, unknown>;
}

/** Fetches, verifies and checks the engine named by `source`; every failure is a StartupError. */
export async function fetchEngine(source: EngineSource, log: Logger): Promise<FetchedEngine> {
  const slash = source.uri.lastIndexOf("/");
  const dirUri = source.uri.slice(0, slash);
  const fileName = source.uri.slice(slash + 1);
  const store = openObjectStore({ uri: dirUri, ...source.store });
  const manifest = await readManifest(source, store, dirUri, log);
  if (manifest.sha256 !== source.sha256) {
    throw new StartupError(
      `engine ${source.uri}: manifest.json describes sha256 ${manifest.sha256} but this deployment expects ${source.sha256}`,
    );
  }
  const path = join(source.cacheDir, `${source.sha256}.kiln`);
  await mkdir(source.cacheDir, { recursive: true });
  try {
    await downloadVerified(store.openRange(fileName), path, manifest.sizeBytes, source, log);
  } catch (err) {
    throw new StartupError(`engine ${source.uri}: ${(err as Error).message}`);
  }

  let header: Record<string, unknown>;
  try {
    // downloadVerified matched the whole file's sha256: the sections need no second read here.
    header = inspect(path, { verifySections: false });
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

async function readManifest(
  source: EngineSource,
  store: ObjectStore,
  dirUri: string,
  log: Logger,
): Promise<EngineManifest> {
  const manifestUri = `${dirUri}/manifest.json`;
  const attempts = source.attempts ?? 5;
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

/**
 * Downloads into `<path>.part` by ranged GETs, several at a time (lib/ranged-download.ts: a failed
 * attempt, or a restarted pod, fetches only the ranges it lacks), verifies the sha256 (hashed in
 * file order while the ranges land, so little of it is left when the last one does) and only then
 * renames the file into place. A cached file is reused when its sha256 still matches. Failures are
 * plain errors, which fetchEngine turns into start-up errors naming the engine.
 */
export async function downloadVerified(
  open: RangeOpener,
  path: string,
  size: number,
  source: Pick<EngineSource, "sha256" | "attempts" | "concurrency" | "chunkBytes">,
  log: Logger,
): Promise<void> {
  if ((await sizeOf(path)) !== undefined) {
    if ((await sha256File(path)) === source.sha256) {
      log.info({ path }, "engine found in the local cache");
      return;
    }
    log.warn({ path }, "cached engine does not match its sha256; downloading it again");
    await rm(path, { force: true });
  }
  const part = `${path}.part`;
  const attempts = source.attempts ?? 5;
  const kept = (await sizeOf(part)) ?? 0;
  if (kept > 0) log.info({ part, bytes: kept, size }, "resuming engine download");
  let nextReport = 0.1;
  let actual: string;
  try {
    actual = await downloadRanges(open, part, size, {
      sha256: true,
      chunkBytes: source.chunkBytes,
      concurrency: source.concurrency,
      attempts,
      retryDelayMs,
      onProgress: (bytes) => {
        while (size > 0 && bytes / size >= nextReport) {
          log.info({ percent: Math.floor((bytes / size) * 100) }, "downloading engine");
          nextReport += 0.1;
        }
      },
      onRetry: (attempt, err, rangesLeft) =>
        log.warn({ attempt, err: err.message, rangesLeft }, "engine download interrupted; resuming"),
    });
  } catch (err) {
    throw new Error(`download failed after ${attempts} attempts: ${(err as Error).message}`);
  }
  if (actual !== source.sha256) {
    await rm(part, { force: true });
    throw new Error(`sha256 mismatch: expected ${source.sha256}, downloaded ${actual}`);
  }
  await rename(part, path);
}
