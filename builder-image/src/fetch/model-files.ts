import { stat } from "node:fs/promises";
import { join } from "node:path";
import { sha256File } from "../../../lib/file-sha256.js";

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

/** Size and sha256 of each file, sorted by name; `known` holds digests a download already took. */
export async function describeFiles(
  dir: string,
  names: string[],
  known: ReadonlyMap<string, string> = new Map(),
): Promise<FetchedModel["files"]> {
  const out: FetchedModel["files"] = [];
  for (const name of [...names].sort()) {
    const path = join(dir, name);
    const sha256 = known.get(name) ?? (await sha256File(path));
    out.push({ path: name, sizeBytes: (await stat(path)).size, sha256 });
  }
  return out;
}
