import { writeFile } from "node:fs/promises";
import { type BuildResult, type EngineManifest, enginePaths, validateManifest } from "../../lib/manifest.js";
import type { ObjectStore } from "../../lib/object-store.js";

/**
 * The engine already published for `key`, if its manifest is valid and the engine object it
 * describes is there at the recorded size. Anything less is treated as absent and rebuilt.
 */
export async function publishedEngine(store: ObjectStore, key: string): Promise<EngineManifest | undefined> {
  const paths = enginePaths(key);
  const raw = await store.get(paths.manifest);
  if (!raw) return undefined;
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw.toString("utf8"));
  } catch {
    return undefined;
  }
  const checked = validateManifest(parsed, key);
  if (!checked.ok) return undefined;
  const size = await store.size(paths.engine);
  return size === checked.value.sizeBytes ? checked.value : undefined;
}

/**
 * Engine first, manifest last: a reader that finds the manifest finds the whole engine. The
 * uploaded size is checked before the manifest makes the engine visible.
 */
export async function publishEngine(
  store: ObjectStore,
  enginePath: string,
  manifest: EngineManifest,
  onProgress: (fraction: number) => void,
): Promise<string> {
  const paths = enginePaths(manifest.key);
  await store.putFile(paths.engine, enginePath, (sent) => onProgress(sent / manifest.sizeBytes));
  const stored = await store.size(paths.engine);
  if (stored !== manifest.sizeBytes) {
    throw new Error(`${store.uri(paths.engine)}: stored ${stored} bytes, expected ${manifest.sizeBytes}`);
  }
  await store.put(paths.manifest, `${JSON.stringify(manifest, null, 2)}\n`);
  return store.uri(paths.engine);
}

/** Kubernetes keeps at most 4 KiB of a termination message; the result must fit. */
const TERMINATION_LIMIT = 4096;

export async function writeTerminationMessage(path: string, result: BuildResult): Promise<void> {
  let text = JSON.stringify(result);
  if (text.length > TERMINATION_LIMIT) text = JSON.stringify({ ...result, tuning: { truncated: true } });
  await writeFile(path, text);
}

export function resultOf(uri: string, manifest: EngineManifest): BuildResult {
  return {
    uri,
    sha256: manifest.sha256,
    sizeBytes: manifest.sizeBytes,
    ...(manifest.tuning ? { tuning: manifest.tuning } : {}),
  };
}
