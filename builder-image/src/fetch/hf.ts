import { createHash } from "node:crypto";
import { createWriteStream } from "node:fs";
import { mkdir, rename, stat } from "node:fs/promises";
import { dirname, join } from "node:path";
import { Readable, Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { hashFileInto, sha256File } from "../../../lib/file-sha256.js";
import { PermanentError } from "../errors.js";
import { describeFiles, type FetchedModel, type FetchProgress, isModelFile } from "./model-files.js";

export interface HfOptions {
  /** HF_ENDPOINT: the Hub or a mirror. */
  endpoint: string;
  /** HF_TOKEN from the model's credentials Secret; never logged. */
  token?: string;
  revision?: string;
}

interface HfModelInfo {
  sha?: string;
  siblings?: { rfilename?: string; size?: number }[];
}

function authHeaders(token: string | undefined): Record<string, string> {
  return token ? { authorization: `Bearer ${token}` } : {};
}

async function hubError(res: Response, what: string): Promise<Error> {
  const body = (await res.text().catch(() => "")).slice(0, 300);
  const message = `${what}: HTTP ${res.status}${body ? ` ${body}` : ""}`;
  // 401/403/404 will not change on retry (wrong name, private repo without a token, bad revision).
  return [401, 403, 404].includes(res.status) ? new PermanentError(message) : new Error(message);
}

async function sizeOf(path: string): Promise<number> {
  try {
    return (await stat(path)).size;
  } catch {
    return 0;
  }
}

/**
 * hf://org/name: resolves the revision to a commit sha (the pin), then downloads each model file at
 * that sha. A download cut off midway resumes from its `.part` with an HTTP Range request.
 */
export async function fetchFromHf(
  source: string,
  into: string,
  opts: HfOptions,
  progress: FetchProgress,
): Promise<FetchedModel> {
  const repo = source.replace(/^hf:\/\//, "");
  if (!/^[\w.-]+\/[\w.-]+$/.test(repo))
    throw new PermanentError(`model.source ${source}: expected hf://<org>/<name>`);
  const revision = opts.revision ?? "main";
  const infoUrl = `${opts.endpoint}/api/models/${repo}/revision/${encodeURIComponent(revision)}`;
  const infoRes = await fetch(infoUrl, { headers: authHeaders(opts.token) });
  if (!infoRes.ok) throw await hubError(infoRes, `model info of ${repo}@${revision}`);
  const info = (await infoRes.json()) as HfModelInfo;
  const sha = info.sha;
  if (!sha) throw new Error(`model info of ${repo}@${revision}: the Hub returned no commit sha`);
  const names = (info.siblings ?? []).map((s) => s.rfilename ?? "").filter(isModelFile);
  if (!names.includes("config.json"))
    throw new PermanentError(`${repo}@${sha}: the repository has no config.json`);
  const sizes = new Map((info.siblings ?? []).map((s) => [s.rfilename ?? "", s.size ?? 0]));
  const total = names.reduce((sum, n) => sum + (sizes.get(n) ?? 0), 0) || 1;
  let done = 0;
  const digests = new Map<string, string>();
  for (const name of names) {
    const dest = join(into, name);
    const digest = await downloadResumable(
      `${opts.endpoint}/${repo}/resolve/${sha}/${name}`,
      dest,
      opts.token,
      (bytes) => progress((done + bytes) / total, `downloading ${name}`),
    );
    digests.set(name, digest);
    done += sizes.get(name) ?? (await sizeOf(dest));
  }
  return { dir: into, revision: sha, files: await describeFiles(into, names, digests) };
}

async function downloadResumable(
  url: string,
  dest: string,
  token: string | undefined,
  onBytes: (bytes: number) => void,
): Promise<string> {
  const part = `${dest}.part`;
  await mkdir(dirname(dest), { recursive: true });
  const have = await sizeOf(part);
  const headers = { ...authHeaders(token), ...(have > 0 ? { range: `bytes=${have}-` } : {}) };
  const res = await fetch(url, { headers, redirect: "follow" });
  if (res.status === 416) {
    // The part already holds every byte: the previous attempt died just before the rename.
    await rename(part, dest);
    return sha256File(dest);
  }
  if (!res.ok || !res.body) throw await hubError(res, `download ${url}`);
  // A server that ignores Range answers 200 with the whole file: start over rather than append.
  const resumed = res.status === 206;
  let written = resumed ? have : 0;
  // The file's sha256 as it streams in (after the kept prefix's), for the build manifest: no pass of
  // its own over a checkpoint afterwards.
  const hash = createHash("sha256");
  if (resumed) await hashFileInto(hash, part, have);
  const count = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      written += chunk.length;
      hash.update(chunk);
      onBytes(written);
      cb(null, chunk);
    },
  });
  await pipeline(
    Readable.fromWeb(res.body as import("node:stream/web").ReadableStream),
    count,
    createWriteStream(part, resumed ? { flags: "r+", start: have } : { flags: "w" }),
  );
  const expected = Number(res.headers.get("content-length") ?? Number.NaN) + (resumed ? have : 0);
  if (Number.isFinite(expected) && (await sizeOf(part)) !== expected) {
    throw new Error(`download ${url}: got ${await sizeOf(part)} of ${expected} bytes`);
  }
  await rename(part, dest);
  return hash.digest("hex");
}
