import type { ObjectMetaLike } from "../controller/kube.js";
import type { EngineBuildSpec, EngineBuildStatus } from "./enginebuild.js";
import type { InferenceModelSpec, InferenceModelStatus } from "./inferencemodel.js";

/** A typed custom resource as read from the API server. */
export interface CustomResource<Spec, Status> {
  apiVersion: string;
  kind: string;
  /** Plain JSON as the API server sends it (timestamps are strings). */
  metadata: ObjectMetaLike;
  spec: Spec;
  status?: Status;
}

export type InferenceModel = CustomResource<InferenceModelSpec, InferenceModelStatus>;
export type EngineBuild = CustomResource<EngineBuildSpec, EngineBuildStatus>;
