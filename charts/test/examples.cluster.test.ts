// Every examples/*.yaml passes the API server's validation of the generated CRDs (schema and CEL
// rules), checked with a server-side dry run of the real kubectl against the test cluster.
import { randomBytes } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseAllDocuments, stringify } from "yaml";
import type { InferenceModelSpec } from "../../operator/src/api/inferencemodel.js";
import { buildSpecFor } from "../../operator/src/inferencemodel/engine-key.js";
import { kubectl } from "./helm.js";

const EXAMPLES = fileURLToPath(new URL("../../examples/", import.meta.url));
const CRDS = fileURLToPath(new URL("../../crds/", import.meta.url));
const files = readdirSync(EXAMPLES).filter((f) => f.endsWith(".yaml"));
const ns = `examples-${randomBytes(3).toString("hex")}`;

interface Doc {
  kind: string;
  metadata: { name: string };
  spec: InferenceModelSpec;
}
const docsOf = (file: string) =>
  parseAllDocuments(readFileSync(`${EXAMPLES}${file}`, "utf8")).map((d) => d.toJSON() as Doc);

async function ok(...args: string[]): Promise<string> {
  const r = await kubectl(args);
  if (r.code !== 0) throw new Error(`kubectl ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

beforeAll(async () => {
  // What a user without the chart does; forced because the chart or the operator's tests may own
  // these fields already.
  await ok("apply", "--server-side", "--force-conflicts", "--field-manager=kiln-examples", "-f", CRDS);
  await ok("wait", "--for=condition=Established", "--timeout=30s", "-f", CRDS);
  await ok("create", "namespace", ns);
});

afterAll(async () => {
  await kubectl(["delete", "namespace", ns, "--wait=false"]);
});

describe("examples/", () => {
  it("has the common cases", () => {
    expect(files).toEqual(
      expect.arrayContaining([
        "bf16-single-gpu.yaml",
        "fp8-hopper.yaml",
        "shared-engine.yaml",
        "private-s3-model.yaml",
      ]),
    );
  });

  it.each(files)("%s passes the API server's validation", async (file) => {
    const out = await ok("apply", "--dry-run=server", "-n", ns, "-f", `${EXAMPLES}${file}`);
    for (const doc of docsOf(file)) {
      expect(out).toContain(`${doc.metadata.name} created (server dry run)`);
    }
  });

  it("a dry run does reject an invalid model: fp8 on a GPU without fp8 tensor cores", async () => {
    const [model] = docsOf("fp8-hopper.yaml");
    if (!model) throw new Error("fp8-hopper.yaml has no document");
    model.spec.gpu.products = ["A100-80GB"];
    const r = await kubectl(["apply", "--dry-run=server", "-n", ns, "-f", "-"], { input: stringify(model) });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/fp8 precision needs fp8 tensor cores/);
  });

  it("shared-engine.yaml describes two models with one engine key", () => {
    const models = docsOf("shared-engine.yaml").filter((d) => d.kind === "InferenceModel");
    expect(models).toHaveLength(2);
    const toolchain = { version: "0.1.0", builderImage: "builder:0.1.0" };
    const keys = models.map((m) => buildSpecFor(m.spec, "A100-80GB", "same-commit", toolchain).key);
    expect(keys[0]).toBe(keys[1]);
    expect(models[0]?.spec.runtime).not.toEqual(models[1]?.spec.runtime);
  });

  it("names only calibration sets the builder ships", () => {
    const builtin = fileURLToPath(new URL("../../builder-image/calibration/", import.meta.url));
    for (const file of files) {
      for (const doc of docsOf(file)) {
        const dataset = doc.spec?.engine?.calibration?.dataset;
        if (dataset?.startsWith("builtin:")) {
          expect(readdirSync(builtin), `${file}: ${dataset}`).toContain(`${dataset.slice(8)}.txt`);
        }
      }
    }
  });

  it("private-s3-model.yaml references the Secret it ships, by name", () => {
    const docs = docsOf("private-s3-model.yaml");
    const secret = docs.find((d) => d.kind === "Secret");
    const model = docs.find((d) => d.kind === "InferenceModel");
    expect(model?.spec.model.source).toMatch(/^s3:\/\//);
    expect(model?.spec.model.credentialsSecret).toBe(secret?.metadata.name);
  });
});
