import { join } from "node:path";
import { openObjectStore } from "../../../lib/object-store.js";
import { PermanentError } from "../errors.js";
import { describeFiles, type FetchedModel, type FetchProgress, isModelFile } from "./model-files.js";

/** s3://bucket/prefix: every model file under the prefix, each download resumable. */
export async function fetchFromS3(
  source: string,
  into: string,
  opts: { endpoint?: string; region?: string; revision?: string },
  progress: FetchProgress,
): Promise<FetchedModel> {
  const store = openObjectStore({ uri: source, ...opts });
  const objects = (await store.list("")).filter((o) => isModelFile(o.path));
  if (!objects.some((o) => o.path === "config.json")) {
    throw new PermanentError(`model.source ${source}: no config.json under that prefix`);
  }
  const total = objects.reduce((sum, o) => sum + o.size, 0) || 1;
  let done = 0;
  for (const o of objects) {
    await store.getFile(o.path, join(into, o.path), (bytes) =>
      progress((done + bytes) / total, `downloading ${o.path}`),
    );
    done += o.size;
  }
  const names = objects.map((o) => o.path);
  return { dir: into, revision: opts.revision ?? "unversioned", files: await describeFiles(into, names) };
}
