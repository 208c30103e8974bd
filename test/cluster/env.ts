import type { S3Client } from "@aws-sdk/client-s3";
import { KubeConfig } from "@kubernetes/client-node";
import { inject } from "vitest";
import { clusterFromEnv } from "./env-vars.js";
import type { ClusterInfo } from "./launcher.js";
import { type S3Endpoint, s3ClientFor } from "./s3-server.js";

// What cluster- and pipeline-tier tests import to reach the cluster that global-setup.ts started.

declare module "vitest" {
  export interface ProvidedContext {
    kilnCluster: ClusterInfo;
  }
}

/**
 * The running test cluster: provided by the global setup, or, outside vitest's provide/inject (a
 * child process, a cluster from `test/cluster/up`), read from the KILN_* environment variables.
 */
export function testCluster(): Pick<ClusterInfo, "kubeconfigPath" | "s3"> & Partial<ClusterInfo> {
  return inject("kilnCluster") ?? clusterFromEnv();
}

/** A client-node KubeConfig for the cluster admin. */
export function testKubeConfig(): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromFile(testCluster().kubeconfigPath);
  return kc;
}

export function testS3(): S3Endpoint {
  return testCluster().s3;
}

/** An S3 client for the test bucket's server; call destroy() when done. */
export function testS3Client(): S3Client {
  return s3ClientFor(testS3());
}
