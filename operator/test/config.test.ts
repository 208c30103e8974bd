import { describe, expect, it } from "vitest";
import { applyConfigChange, ConfigError, loadConfig } from "../src/config.js";

const env = {
  KILN_TOOLCHAIN_VERSION: "0.1.0",
  KILN_BUILDER_IMAGE: "b:1",
  KILN_RUNTIME_IMAGE: "r:1",
  KILN_STORE_URI: "s3://engines/kiln",
};

describe("operator config", () => {
  it("loads from the environment with defaults for limits and GPU node selectors", () => {
    const c = loadConfig(env, () => "");
    expect(c.toolchain).toEqual({ version: "0.1.0", builderImage: "b:1", runtimeImage: "r:1" });
    expect(c.limits.maxConcurrentBuilds).toBe(2);
    expect(c.defaults.gpuNodeSelectors.H200).toEqual({ "nvidia.com/gpu.product": "NVIDIA-H200" });
  });

  it("reads a mounted ConfigMap file, environment taking precedence", () => {
    const file =
      "toolchain:\n  version: 9.9.9\n  builderImage: fb\n  runtimeImage: fr\nobjectStore:\n  uri: s3://bucket/p\nlimits:\n  maxConcurrentBuilds: 5\ndefaults:\n  gpuNodeSelectors:\n    H100: {gpu: h100}\n";
    const c = loadConfig(
      { KILN_CONFIG_FILE: "/etc/kiln/config.yaml", KILN_TOOLCHAIN_VERSION: "1.0.0" },
      () => file,
    );
    expect(c.toolchain.version).toBe("1.0.0");
    expect(c.toolchain.builderImage).toBe("fb");
    expect(c.limits.maxConcurrentBuilds).toBe(5);
    expect(c.defaults.gpuNodeSelectors.H100).toEqual({ gpu: "h100" });
  });

  it("reports every problem at once, naming where each setting comes from", () => {
    let error: unknown;
    try {
      loadConfig({ KILN_STORE_URI: "http://nope", KILN_MAX_CONCURRENT_BUILDS: "zero" }, () => "");
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    const problems = (error as ConfigError).problems;
    expect(problems).toContain(
      "toolchain.version is required (env KILN_TOOLCHAIN_VERSION or toolchain.version in KILN_CONFIG_FILE)",
    );
    expect(problems.some((p) => p.startsWith("objectStore.uri must be s3://"))).toBe(true);
    expect(
      problems.some((p) =>
        p.startsWith('limits.maxConcurrentBuilds must be an integer in [1, 1000], got "zero"'),
      ),
    ).toBe(true);
  });

  it("rejects node selectors for unknown GPU products", () => {
    expect(() =>
      loadConfig(
        { ...env, KILN_CONFIG_FILE: "f" },
        () => "defaults:\n  gpuNodeSelectors:\n    TPU: {a: b}\n",
      ),
    ).toThrow(/gpuNodeSelectors.TPU: unknown GPU product/);
  });

  it("reads a ConfigMap document in place of the file, environment still winning", () => {
    const c = loadConfig({ ...env, KILN_TOOLCHAIN_VERSION: undefined }, () => "", {
      source: "ConfigMap kiln-system/kiln key config.yaml",
      text: "toolchain:\n  version: 2.0.0\nlimits:\n  maxConcurrentBuilds: 1\n",
    });
    expect(c.toolchain.version).toBe("2.0.0");
    expect(c.limits.maxConcurrentBuilds).toBe(1);
    expect(() =>
      loadConfig(env, () => "", { source: "ConfigMap a/b key config.yaml", text: "- a list" }),
    ).toThrow(/ConfigMap a\/b key config.yaml: must be a YAML mapping/);
  });

  it("applies toolchain, limits and defaults in place and names sections that need a restart", () => {
    const current = loadConfig(env, () => "");
    const holder = current.toolchain;
    const next = loadConfig(
      {
        ...env,
        KILN_TOOLCHAIN_VERSION: "0.2.0",
        KILN_STORE_URI: "s3://other",
        KILN_MAX_CONCURRENT_BUILDS: "4",
      },
      () => "",
    );
    expect(applyConfigChange(current, next)).toEqual({
      changed: ["toolchain", "limits"],
      needsRestart: ["objectStore"],
    });
    expect(holder.version).toBe("0.2.0");
    expect(current.limits.maxConcurrentBuilds).toBe(4);
    expect(current.objectStore.uri).toBe("s3://engines/kiln");
  });

  it("refuses a file:// store, which build Jobs and runtime pods on other nodes cannot see", () => {
    expect(() => loadConfig({ ...env, KILN_STORE_URI: "file:///var/kiln" }, () => "")).toThrow(
      /objectStore\.uri file:\/\/\/var\/kiln: the operator does not support a file:\/\/ store.*use an S3-compatible store/,
    );
  });

  it("requires the renew deadline below the lease duration", () => {
    expect(() =>
      loadConfig(
        { ...env, KILN_LEASE_DURATION_SECONDS: "5", KILN_LEASE_RENEW_DEADLINE_SECONDS: "5" },
        () => "",
      ),
    ).toThrow(/renewDeadlineSeconds \(5\) must be below leaseDurationSeconds \(5\)/);
  });
});
