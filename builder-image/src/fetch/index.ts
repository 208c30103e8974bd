import { MODEL_CREDENTIALS_PREFIX, PVC_MOUNT_ROOT } from "../../../lib/manifest.js";
import type { ObjectStoreOptions } from "../../../lib/object-store.js";
import { PermanentError } from "../errors.js";
import { fetchFromHf } from "./hf.js";
import type { FetchedModel, FetchProgress } from "./model-files.js";
import { fetchFromPvc } from "./pvc.js";
import { fetchFromS3 } from "./s3.js";

export type { FetchedModel } from "./model-files.js";

export interface FetchEnv {
  hfEndpoint: string;
  hfToken?: string;
  pvcRoot: string;
  s3Endpoint?: string;
  s3Region?: string;
  /** The model Secret's AWS_* keys; without them the store's credentials read the checkpoint. */
  s3Credentials?: ObjectStoreOptions["credentials"];
}

export function fetchEnvFrom(env: Record<string, string | undefined>): FetchEnv {
  const model = (name: string) => env[`${MODEL_CREDENTIALS_PREFIX}${name}`];
  const accessKeyId = model("AWS_ACCESS_KEY_ID");
  const secretAccessKey = model("AWS_SECRET_ACCESS_KEY");
  const sessionToken = model("AWS_SESSION_TOKEN");
  const hfToken = model("HF_TOKEN") ?? env.HF_TOKEN;
  return {
    hfEndpoint: (env.HF_ENDPOINT ?? "https://huggingface.co").replace(/\/+$/, ""),
    ...(hfToken ? { hfToken } : {}),
    ...(accessKeyId && secretAccessKey
      ? { s3Credentials: { accessKeyId, secretAccessKey, ...(sessionToken ? { sessionToken } : {}) } }
      : {}),
    pvcRoot: env.KILN_PVC_ROOT ?? PVC_MOUNT_ROOT,
    ...((env.KILN_MODEL_S3_ENDPOINT ?? env.KILN_STORE_ENDPOINT)
      ? { s3Endpoint: env.KILN_MODEL_S3_ENDPOINT ?? env.KILN_STORE_ENDPOINT }
      : {}),
    ...(env.KILN_STORE_REGION ? { s3Region: env.KILN_STORE_REGION } : {}),
  };
}

/** Brings the checkpoint named by model.source to a local folder (or finds it mounted). */
export async function fetchModel(
  source: string,
  revision: string | undefined,
  into: string,
  env: FetchEnv,
  progress: FetchProgress,
): Promise<FetchedModel> {
  const scheme = source.split("://")[0];
  switch (scheme) {
    case "hf":
      return fetchFromHf(
        source,
        into,
        {
          endpoint: env.hfEndpoint,
          ...(env.hfToken ? { token: env.hfToken } : {}),
          ...(revision ? { revision } : {}),
        },
        progress,
      );
    case "s3":
      return fetchFromS3(
        source,
        into,
        {
          ...(env.s3Endpoint ? { endpoint: env.s3Endpoint } : {}),
          ...(env.s3Region ? { region: env.s3Region } : {}),
          ...(env.s3Credentials ? { credentials: env.s3Credentials } : {}),
          ...(revision ? { revision } : {}),
        },
        progress,
      );
    case "pvc":
      return fetchFromPvc(source, env.pvcRoot, revision);
    default:
      throw new PermanentError(`model.source ${source}: unsupported scheme (hf://, s3:// or pvc://)`);
  }
}
