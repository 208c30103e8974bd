import { stat } from "node:fs/promises";
import { join } from "node:path";
import { sha256Files } from "../../../lib/file-sha256.js";

/** A fetched checkpoint: the folder the compiler reads and what it read, for the manifest. */
export interface FetchedModel {
  dir: string;
  /** The revision actually fetched (a commit sha for hf://, as pinned for s3:// and pvc://). */
  revision: string;
  files: { path: string; sizeBytes: number; sha256: string }[];
}

export type FetchProgress = (fraction: number, message: string) => void;

const WANTED = [
  /^config\.json$/,
  /^generation_config\.json$/,
  /\.safetensors$/,
  /^model\.safetensors\.index\.json$/,
  /^tokenizer\.json$/,
  /^tokenizer_config\.json$/,
  /^special_tokens_map\.json$/,
  /^chat_template\.(jinja|json)$/,
];

/** Only what the compiler reads: a repository's README, pickles or other formats are left behind. */
export function isModelFile(name: string): boolean {
  const base = name.split("/").at(-1) ?? name;
  return !name.includes("/") && WANTED.some((re) => re.test(base));
}

/**
 * Size and sha256 of each file, sorted by name; `known` holds digests a download already took. The
 * rest (a pvc:// checkpoint's shards, read in place) are hashed on worker threads side by side.
 */
export async function describeFiles(
  dir: string,
  names: string[],
  known: ReadonlyMap<string, string> = new Map(),
): Promise<FetchedModel["files"]> {
  const sorted = [...names].sort();
  const unknown = sorted.filter((name) => !known.has(name));
  const hashed = await sha256Files(unknown.map((name) => join(dir, name)));
  const digests = new Map([...known, ...unknown.map((name, i) => [name, hashed[i] as string] as const)]);
  return Promise.all(
    sorted.map(async (name) => ({
      path: name,
      sizeBytes: (await stat(join(dir, name))).size,
      sha256: digests.get(name) as string,
    })),
  );
}
