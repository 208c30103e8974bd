import { defineConfig } from "vitest/config";

// One project per test tier of DESIGN.md; `vitest run --project <tier>` runs one of them.
export default defineConfig({
  test: {
    reporters: ["default", "./test/summary-reporter.ts"],
    projects: [
      {
        test: {
          name: "unit",
          include: ["**/*.test.ts"],
          // expect.poll's default 1 s is short for a loopback HTTP round trip on a loaded CI machine.
          expect: { poll: { timeout: 10_000 } },
          exclude: [
            "**/node_modules/**",
            "**/*.parity.test.ts",
            "**/*.cluster.test.ts",
            "**/*.pipeline.test.ts",
          ],
        },
      },
      {
        test: {
          name: "parity",
          include: ["test/parity/**/*.parity.test.ts"],
          testTimeout: 600_000,
          hookTimeout: 1_200_000,
        },
      },
      {
        test: {
          name: "cluster",
          include: ["**/*.cluster.test.ts"],
          exclude: ["**/node_modules/**"],
          globalSetup: ["./test/cluster/global-setup.ts"],
          testTimeout: 120_000,
          hookTimeout: 300_000,
          fileParallelism: false,
        },
      },
      {
        test: {
          name: "pipeline",
          include: ["**/*.pipeline.test.ts"],
          exclude: ["**/node_modules/**"],
          globalSetup: ["./test/cluster/global-setup.ts"],
          testTimeout: 600_000,
          hookTimeout: 600_000,
          fileParallelism: false,
        },
      },
    ],
  },
});
