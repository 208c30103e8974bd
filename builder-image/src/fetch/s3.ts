import { join } from "node:path";
import { type ObjectStoreOptions, openObjectStore } from "../../../lib/object-store.js";
import { PermanentError } from "../errors.js";
import { describeFiles, type FetchedModel, type FetchProgress, isModelFile } from "./model-files.js";

/**
 * S3 answers that no retry can change: the credentials are wrong or lack the right, or the bucket
 * is not there. Throttling, 5xx and network errors stay retryable.
 */
const PERMANENT_S3_ERRORS = new Set([
  "AccessDenied",
  "InvalidAccessKeyId",
  "SignatureDoesNotMatch",
  "InvalidToken",
  "ExpiredToken",
  "NoSuchBucket",
  // versitygw's answer (404) to an access key it does not know: AWS says InvalidAccessKeyId.
  "XAdminUserNotFound",
]);

export function isPermanentS3Error(err: unknown): boolean {
  if (typeof err !== "object" || err === null) return false;
  const e = err as { name?: string; Code?: string; $metadata?: { httpStatusCode?: number } };
  const status = e.$metadata?.httpStatusCode;
  return (
    PERMANENT_S3_ERRORS.has(e.name ?? "") ||
    PERMANENT_S3_ERRORS.has(e.Code ?? "") ||
    status === 401 ||
    status === 403
  );
}

/** s3://bucket/prefix: every model file under the prefix, each download resumable. */
export async function fetchFromS3(
  source: string,
  into: string,
  opts: Pick<ObjectStoreOptions, "endpoint" | "region" | "credentials"> & { revision?: string },
  progress: FetchProgress,
): Promise<FetchedModel> {
  const store = openObjectStore({ uri: source, ...opts });
  try {
    const objects = (await store.list("")).filter((o) => isModelFile(o.path));
    if (!objects.some((o) => o.path === "config.json")) {
      throw new PermanentError(`model.source ${source}: no config.json under that prefix`);
    }
    const total = objects.reduce((sum, o) => sum + o.size, 0) || 1;
    let done = 0;
    // Each file's sha256 comes with its download (hashed as its ranges land), not from a pass after.
    const digests = new Map<string, string>();
    for (const o of objects) {
      const sha256 = await store.getFile(o.path, join(into, o.path), (bytes) =>
        progress((done + bytes) / total, `downloading ${o.path}`),
      );
      digests.set(o.path, sha256);
      done += o.size;
    }
    const names = objects.map((o) => o.path);
    return {
      dir: into,
      revision: opts.revision ?? "unversioned",
      files: await describeFiles(into, names, digests),
    };
  } catch (err) {
    if (!isPermanentS3Error(err)) throw err;
    const e = err as Error;
    throw new PermanentError(
      `model.source ${source}: ${e.name}: ${e.message} (check the model's credentialsSecret: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)`,
      { cause: err },
    );
  }
}
