import type { S3Endpoint } from "./s3-server.js";

// The environment contract between the cluster launcher and whatever runs against it: tests, the
// pipeline tier's local pod processes, or a human's shell after `test/cluster/up`.
export const envNames = {
  kubeconfig: "KILN_KUBECONFIG",
  s3Endpoint: "KILN_S3_ENDPOINT",
  s3Bucket: "KILN_S3_BUCKET",
  s3AccessKeyId: "KILN_S3_ACCESS_KEY_ID",
  s3SecretAccessKey: "KILN_S3_SECRET_ACCESS_KEY",
  s3Region: "KILN_S3_REGION",
  logDir: "KILN_CLUSTER_LOG_DIR",
} as const;

export function clusterEnvVars(info: {
  kubeconfigPath: string;
  s3: S3Endpoint;
  logDir: string;
}): Record<string, string> {
  return {
    [envNames.kubeconfig]: info.kubeconfigPath,
    [envNames.s3Endpoint]: info.s3.endpoint,
    [envNames.s3Bucket]: info.s3.bucket,
    [envNames.s3AccessKeyId]: info.s3.accessKeyId,
    [envNames.s3SecretAccessKey]: info.s3.secretAccessKey,
    [envNames.s3Region]: info.s3.region,
    [envNames.logDir]: info.logDir,
  };
}

/** Reads the contract back; throws naming the first missing variable. */
export function clusterFromEnv(env: NodeJS.ProcessEnv = process.env): {
  kubeconfigPath: string;
  s3: S3Endpoint;
  logDir?: string;
} {
  const need = (name: string) => {
    const value = env[name];
    if (!value)
      throw new Error(`${name} is not set: run inside the cluster test tier or after test/cluster/up`);
    return value;
  };
  return {
    kubeconfigPath: need(envNames.kubeconfig),
    s3: {
      endpoint: need(envNames.s3Endpoint),
      bucket: need(envNames.s3Bucket),
      accessKeyId: need(envNames.s3AccessKeyId),
      secretAccessKey: need(envNames.s3SecretAccessKey),
      region: env[envNames.s3Region] || "us-east-1",
    },
    logDir: env[envNames.logDir],
  };
}
