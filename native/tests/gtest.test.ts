import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, test } from "vitest";

// Runs the C++ GoogleTest binary once, at collection time, and turns each gtest case into a vitest
// test, so the native results land in the repo's single test summary.

interface GtestCase {
  name: string;
  status: string;
  result?: string;
  failures?: { failure: string }[];
}
interface GtestSuite {
  name: string;
  testsuite: GtestCase[];
}

const here = dirname(fileURLToPath(import.meta.url));
const binary = join(here, "..", "build", "kiln-native-tests");

function runGtest(): { suites: GtestSuite[]; error?: string } {
  if (!existsSync(binary)) {
    return { suites: [], error: `${binary} is missing: run native/build.sh (scripts/test.sh does) first` };
  }
  const dir = mkdtempSync(join(tmpdir(), "kiln-gtest-"));
  try {
    const report = join(dir, "report.json");
    const run = spawnSync(binary, [`--gtest_output=json:${report}`], { encoding: "utf8", timeout: 600_000 });
    if (!existsSync(report)) {
      return {
        suites: [],
        error: `gtest wrote no report (exit ${run.status}, signal ${run.signal}): ${run.stderr}`,
      };
    }
    return { suites: (JSON.parse(readFileSync(report, "utf8")) as { testsuites: GtestSuite[] }).testsuites };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const { suites, error } = runGtest();

if (error !== undefined) {
  test("native GoogleTest suite runs", () => {
    expect.fail(error);
  });
}

for (const suite of suites) {
  describe(`native ${suite.name}`, () => {
    for (const c of suite.testsuite) {
      test(c.name, () => {
        const failures = (c.failures ?? []).map((f) => f.failure).join("\n");
        expect(failures, failures).toBe("");
        expect(c.status).toBe("RUN");
      });
    }
  });
}
