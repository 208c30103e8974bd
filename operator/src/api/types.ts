import type { V1ObjectMeta } from "@kubernetes/client-node";
import type { EngineBuildSpec, EngineBuildStatus } from "./enginebuild.js";
import type { InferenceModelSpec, InferenceModelStatus } from "./inferencemodel.js";

/** A typed custom resource as read from the API server. */
export interface CustomResource<Spec, Status> {
  apiVersion: string;
  kind: string;
  metadata: V1ObjectMeta;
  spec: Spec;
  status?: Status;
}

export type InferenceModel = CustomResource<InferenceModelSpec, InferenceModelStatus>;
export type EngineBuild = CustomResource<EngineBuildSpec, EngineBuildStatus>;
