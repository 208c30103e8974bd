// Writes crds/<plural>.kiln.dev.yaml from the TypeScript schemas (`npm run gen:crds`).
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { CRDS, crdFileName, crdYaml } from "./crds.js";

export const CRD_DIR = fileURLToPath(new URL("../../../crds/", import.meta.url));

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  for (const def of CRDS) writeFileSync(join(CRD_DIR, crdFileName(def)), crdYaml(def));
}
