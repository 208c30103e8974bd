import type { ResourceType } from "../../operator/src/controller/kube.js";

export const NODE: ResourceType = { apiVersion: "v1", kind: "Node", plural: "nodes", namespaced: false };
export const POD: ResourceType = { apiVersion: "v1", kind: "Pod", plural: "pods", namespaced: true };
export const SECRET: ResourceType = { apiVersion: "v1", kind: "Secret", plural: "secrets", namespaced: true };
export const CONFIG_MAP: ResourceType = {
  apiVersion: "v1",
  kind: "ConfigMap",
  plural: "configmaps",
  namespaced: true,
};
export const NODE_LEASE: ResourceType = {
  apiVersion: "coordination.k8s.io/v1",
  kind: "Lease",
  plural: "leases",
  namespaced: true,
};
