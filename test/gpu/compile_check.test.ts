import { spawnSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { expect, test } from "vitest";

// The CUDA backend is only built on the GPU machine. Its host sources (the backend, the tools and
// the GPU tests) are compiled here against that machine's CUDA release, so that code written away
// from the GPU and calling an API the release lacks fails on commit rather than in a device call.
const script = join(dirname(fileURLToPath(import.meta.url)), "compile_check.sh");

test("the CUDA backend's host sources compile against the GPU machine's CUDA release", {
  timeout: 900_000,
}, () => {
  const run = spawnSync("bash", [script, "--host"], { encoding: "utf8", timeout: 880_000 });
  const output = `${run.stdout}${run.stderr}`;
  expect(run.status, output).toBe(0);
  expect(output).toMatch(/^ok {5}native\/src\/backend\/cuda\/model\.cpp$/m);
  expect(output).not.toMatch(/FAILED/);
});
