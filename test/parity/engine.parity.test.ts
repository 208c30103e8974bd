import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { beforeAll, describe, expect, test } from "vitest";
import {
  brokenCheckpoints,
  type CaseReport,
  checkpoints,
  kilnBinary,
  outDir,
  type ParityReport,
  parityDir,
  precisions,
  run,
  thresholds,
  venvPython,
} from "./harness.js";

// One run of make_checkpoints.py + compare.py (about 3-4 minutes on 2 cores); every test below
// asserts numbers that run measured, read back from its JSON report.
let report: ParityReport;
let manifestNames: string[];

beforeAll(async () => {
  if (!existsSync(kilnBinary)) throw new Error(`${kilnBinary} missing: run bash native/build.sh first`);
  const python = venvPython();
  const ckDir = join(outDir, "checkpoints");
  const made = await run(python, [join(parityDir, "make_checkpoints.py"), ckDir]);
  if (made.code !== 0) throw new Error(`make_checkpoints.py failed:\n${made.stderr.slice(-3000)}`);
  manifestNames = (
    JSON.parse(readFileSync(join(ckDir, "manifest.json"), "utf8")) as { checkpoints: { name: string }[] }
  ).checkpoints.map((c) => c.name);
  // compare.py exits 1 when a case fails; the report is still written and the tests say which.
  const compared = await run(python, [
    join(parityDir, "compare.py"),
    "--checkpoints",
    join(ckDir, "manifest.json"),
    "--kiln",
    kilnBinary,
    "--out",
    outDir,
  ]);
  if (compared.code !== 0 && compared.code !== 1) {
    throw new Error(`compare.py crashed (${compared.code}):\n${compared.stderr.slice(-3000)}`);
  }
  const reportFile = join(outDir, "report.json");
  if (!existsSync(reportFile))
    throw new Error(`compare.py wrote no report:\n${compared.stderr.slice(-3000)}`);
  report = JSON.parse(readFileSync(reportFile, "utf8")) as ParityReport;
});

function findCase(checkpoint: string, precision: string): CaseReport {
  const c = report.cases.find((x) => x.checkpoint === checkpoint && x.precision === precision);
  if (!c) throw new Error(`no report for ${checkpoint} ${precision}`);
  return c;
}

test("the checkpoints made are the ones this file tests", () => {
  expect(manifestNames).toEqual(checkpoints.map((c) => c.name));
});

describe.each(checkpoints)("$name ($arch)", ({ name }) => {
  test.each(precisions)("%s matches transformers", (precision) => {
    const c = findCase(name, precision);
    expect(c.build.ok, `build failed: ${c.build.stderr_tail}`).toBe(true);
    expect(c.error, c.error).toBeUndefined();
    const t = thresholds[precision];
    expect(c.thresholds).toEqual(t);
    expect(c.steps_compared).toBe(4 * 32);
    expect(c.max_rel_err).toBeLessThan(t.max_rel_err);
    if ("tokens_identical" in t) expect(c.tokens_identical).toBe(true);
    if ("min_top1_agreement" in t) expect(c.top1_agreement).toBeGreaterThanOrEqual(t.min_top1_agreement);
  });
});

describe("kiln-native build refuses bad checkpoints", () => {
  test.each(brokenCheckpoints)("%s fails with an error naming the culprit", (name) => {
    const b = report.broken.find((x) => x.checkpoint === name);
    expect(b, `no report for ${name}`).toBeDefined();
    if (!b) return;
    expect(b.exit_code).not.toBe(0);
    expect(b.output_tail).toContain(b.must_mention);
  });
});

test("negative control: an engine without llama3 rope_scaling misses the fp32 bar", () => {
  // Guards the harness itself: were it comparing the wrong reference, or prompts too short for
  // rope scaling to matter, this engine would pass.
  const c = report.controls.find((x) => x.control.includes("rope_scaling"));
  expect(c, "no control in the report").toBeDefined();
  expect(c?.error).toBeUndefined();
  expect(c?.max_rel_err).toBeGreaterThan(c?.must_exceed_rel_err ?? Number.POSITIVE_INFINITY);
  expect(c?.max_rel_err).toBeGreaterThan(100 * thresholds.fp32.max_rel_err);
});
