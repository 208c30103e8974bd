import { describe, expect, it } from "vitest";
import { RUNTIME_ENV } from "../../lib/manifest.js";
import type { InferenceModelSpec } from "../src/api/inferencemodel.js";
import { desiredDeployment } from "../src/inferencemodel/workload.js";
import { config, model } from "./fixtures.js";

const engine = {
  key: "k".repeat(64),
  uri: "s3://engines/kiln/e",
  sha256: "a".repeat(64),
  toolchain: "0.1.0",
  build: "b",
};

const kvDtypeEnvOf = (engineSpec: InferenceModelSpec["engine"]) =>
  desiredDeployment(
    model("m", { engine: engineSpec }),
    "H100",
    engine,
    config,
  ).spec?.template.spec?.containers[0]?.env?.filter((e) => e.name === RUNTIME_ENV.kvCacheDtype);

// The KV cache type is chosen by the runtime pod, not baked into the engine: the pod must be told.
describe("the runtime pod's KV cache type", () => {
  it.each(["fp8", "bf16"] as const)("is passed as KILN_KV_CACHE_DTYPE=%s", (dtype) => {
    expect(kvDtypeEnvOf({ kvCache: { dtype } })).toEqual([{ name: "KILN_KV_CACHE_DTYPE", value: dtype }]);
  });

  it("is left unset for auto, explicit or defaulted, so the backend's default applies", () => {
    expect(kvDtypeEnvOf({ kvCache: { dtype: "auto" } })).toEqual([]);
    expect(kvDtypeEnvOf(undefined)).toEqual([]);
  });
});
