import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { CRDS, crdFileName, crdYaml, engineBuildCrd, inferenceModelCrd } from "../src/api/crds.js";
import { CRD_DIR } from "../src/api/generate-crds.js";
import type { JsonSchema } from "../src/api/schema.js";

const specOf = (crd: typeof inferenceModelCrd) => {
  const version = crd.spec.versions[0];
  if (!version) throw new Error("CRD has no version");
  const spec = version.schema.openAPIV3Schema.properties?.spec;
  if (!spec) throw new Error("CRD has no spec schema");
  return spec;
};

const at = (schema: JsonSchema, path: string): JsonSchema => {
  let node = schema;
  for (const part of path.split(".")) {
    const next = part === "[]" ? node.items : node.properties?.[part];
    if (!next) throw new Error(`no ${part} in ${path}`);
    node = next;
  }
  return node;
};

describe("generated CRDs", () => {
  it.each(CRDS.map((c) => [crdFileName(c), c] as const))(
    "crds/%s is up to date (run `npm run gen:crds`)",
    (file, crd) => {
      expect(readFileSync(join(CRD_DIR, file), "utf8")).toBe(crdYaml(crd));
    },
  );

  it("round-trips through YAML to the same object", () => {
    for (const crd of CRDS) expect(parse(crdYaml(crd))).toEqual(crd);
  });

  it("have short names, the kiln category and a status subresource", () => {
    expect(inferenceModelCrd.spec.names.shortNames).toEqual(["im"]);
    expect(engineBuildCrd.spec.names.shortNames).toEqual(["eb"]);
    for (const crd of CRDS) {
      expect(crd.spec.names.categories).toEqual(["kiln"]);
      expect(crd.spec.versions[0]?.subresources).toEqual({ status: {} });
    }
  });

  it("print the columns `kubectl get` shows", () => {
    const names = (crd: typeof inferenceModelCrd) =>
      crd.spec.versions[0]?.additionalPrinterColumns
        .filter((c) => !c.priority)
        .map((c) => c.name.toUpperCase());
    expect(names(inferenceModelCrd)).toEqual([
      "PRECISION",
      "GPU",
      "PHASE",
      "READY",
      "ENGINE",
      "ENDPOINT",
      "AGE",
    ]);
    expect(names(engineBuildCrd)).toEqual(["MODEL", "PHASE", "ATTEMPTS", "AGE"]);
  });

  it("carry defaults, enums and bounds on InferenceModel fields", () => {
    const spec = specOf(inferenceModelCrd);
    expect(at(spec, "engine.precision")).toMatchObject({
      default: "bf16",
      enum: ["bf16", "fp16", "fp8", "int8-weight"],
    });
    expect(at(spec, "runtime.replicas")).toMatchObject({ minimum: 0, default: 1 });
    expect(at(spec, "engine.kvCache").default).toEqual({});
    expect(spec.required).toEqual(["model", "gpu"]);
    expect(at(spec, "gpu.products")).toMatchObject({ minItems: 1, "x-kubernetes-list-type": "set" });
  });

  it("express cross-field rules as CEL validations", () => {
    const spec = specOf(inferenceModelCrd);
    const engineRules = at(spec, "engine")["x-kubernetes-validations"] ?? [];
    expect(engineRules.map((r) => r.fieldPath)).toContain(".maxInputLen");
    expect(at(spec, "model.source")["x-kubernetes-validations"]?.[0]?.rule).toContain(
      "self.startsWith('hf://')",
    );
    const rootRules = spec["x-kubernetes-validations"] ?? [];
    expect(rootRules.find((r) => r.fieldPath === ".engine.precision")?.rule).toContain("'H100'");
    expect(specOf(engineBuildCrd)["x-kubernetes-validations"]?.[0]?.rule).toBe("self == oldSelf");
  });
});
