// Writes crds/<plural>.kiln.dev.yaml from the TypeScript schemas (`npm run gen:crds`), and the same
// files into the Helm chart, which templates them (charts/kiln/templates/crds.yaml).
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { CRDS, crdFileName, crdYaml } from "./crds.js";

export const CRD_DIR = fileURLToPath(new URL("../../../crds/", import.meta.url));
export const CHART_CRD_DIR = fileURLToPath(new URL("../../../charts/kiln/files/crds/", import.meta.url));

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  for (const def of CRDS) {
    for (const dir of [CRD_DIR, CHART_CRD_DIR]) writeFileSync(join(dir, crdFileName(def)), crdYaml(def));
  }
}
