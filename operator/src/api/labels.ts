// Labels and annotations Kiln puts on what it creates.
export const LABELS = {
  model: "kiln.dev/model",
  product: "kiln.dev/gpu-product",
  engineBuild: "kiln.dev/engine-build",
  engineKey: "kiln.dev/engine-key",
  /** On a build Job: which attempt of its EngineBuild it is (1, 2, ...). */
  buildAttempt: "kiln.dev/build-attempt",
  managedBy: "app.kubernetes.io/managed-by",
  component: "app.kubernetes.io/component",
} as const;

export const ANNOTATIONS = {
  engineKey: "kiln.dev/engine-key",
  engineUri: "kiln.dev/engine-uri",
  engineSha256: "kiln.dev/engine-sha256",
  toolchain: "kiln.dev/toolchain",
} as const;

export const MANAGED_BY = "kiln-operator";
