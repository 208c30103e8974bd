import { HeadObjectCommand, S3Client } from "@aws-sdk/client-s3";
import type { InferenceModel } from "../api/types.js";
import type { OperatorConfig } from "../config.js";

/** Finds the current revision of a model source, to pin it before the first build. */
export type RevisionResolver = (source: string) => Promise<string>;

/**
 * The revision to build from: the spec's, else the one already pinned for this exact source (a
 * pin is never re-resolved, so upstream pushes do not rebuild silently), else undefined (resolve).
 */
export function pinnedRevision(model: InferenceModel): string | undefined {
  if (model.spec.model.revision) return model.spec.model.revision;
  const pinned = model.status?.model;
  return pinned && pinned.source === model.spec.model.source ? pinned.revision : undefined;
}

/**
 * hf:// asks the Hub for the commit of `main`; s3:// takes the ETag of the checkpoint's config.json;
 * pvc:// has no version to read, so it pins "unversioned" (set spec.model.revision to mark changes).
 */
export function defaultRevisionResolver(config: OperatorConfig, env = process.env): RevisionResolver {
  const hub = env.HF_ENDPOINT ?? "https://huggingface.co";
  let s3: S3Client | undefined;
  return async (source) => {
    const url = new URL(source);
    const path = url.pathname.replace(/^\/+|\/+$/g, "");
    if (url.protocol === "hf:") {
      const repo = `${url.hostname}/${path}`;
      const res = await fetch(`${hub}/api/models/${repo}/revision/main`, {
        headers: env.HF_TOKEN ? { authorization: `Bearer ${env.HF_TOKEN}` } : {},
        signal: AbortSignal.timeout(10_000),
      });
      if (!res.ok) throw new Error(`${source}: the Hub answered ${res.status} for revision main`);
      const body = (await res.json()) as { sha?: string };
      if (!body.sha) throw new Error(`${source}: the Hub returned no commit sha`);
      return body.sha;
    }
    if (url.protocol === "s3:") {
      s3 ??= new S3Client({
        region: config.objectStore.region,
        ...(config.objectStore.endpoint
          ? { endpoint: config.objectStore.endpoint, forcePathStyle: true }
          : {}),
      });
      const head = await s3.send(new HeadObjectCommand({ Bucket: url.hostname, Key: `${path}/config.json` }));
      if (!head.ETag) throw new Error(`${source}: config.json has no ETag`);
      return head.ETag.replace(/"/g, "");
    }
    return "unversioned";
  };
}
