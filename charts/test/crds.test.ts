import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { CRDS, crdFileName, crdYaml } from "../../operator/src/api/crds.js";
import { CHART_CRD_DIR, CRD_DIR } from "../../operator/src/api/generate-crds.js";

describe("the chart's CRDs", () => {
  it.each(CRDS.map((c) => [crdFileName(c), c] as const))(
    "charts/kiln/files/crds/%s is the generated CRD, byte for byte (run `npm run gen:crds`)",
    (file, crd) => {
      const chartCopy = readFileSync(join(CHART_CRD_DIR, file), "utf8");
      expect(chartCopy).toBe(crdYaml(crd));
      expect(chartCopy).toBe(readFileSync(join(CRD_DIR, file), "utf8"));
    },
  );

  it("holds no CRD the operator no longer defines", () => {
    expect(readdirSync(CHART_CRD_DIR).sort()).toEqual(CRDS.map(crdFileName).sort());
  });
});
