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

  it("takes a file:// store with the volume that holds it, from the file or as YAML in the environment", () => {
    const file =
      "objectStore:\n  uri: file:///var/kiln\n  volume:\n    nfs: {server: nas.lan, path: /exports/kiln}\n";
    const fromFile = loadConfig({ ...env, KILN_STORE_URI: undefined, KILN_CONFIG_FILE: "f" }, () => file);
    expect(fromFile.objectStore).toMatchObject({
      uri: "file:///var/kiln",
      volume: { nfs: { server: "nas.lan", path: "/exports/kiln" } },
    });
    const fromEnv = loadConfig(
      {
        ...env,
        KILN_STORE_URI: "file:///var/kiln",
        KILN_STORE_VOLUME: '{"hostPath": {"path": "/srv/kiln"}}',
      },
      () => "",
    );
    expect(fromEnv.objectStore.volume).toEqual({ hostPath: { path: "/srv/kiln" } });
    expect(loadConfig(env, () => "").objectStore.volume).toBeUndefined();
  });

  const storeProblems = (uri: string, volume?: string) => {
    try {
      loadConfig({ ...env, KILN_STORE_URI: uri, KILN_STORE_VOLUME: volume }, () => "");
    } catch (err) {
      return (err as ConfigError).problems;
    }
    return [];
  };

  it("refuses a file:// store without its volume, saying what to set and where", () => {
    const [problem, ...rest] = storeProblems("file:///var/kiln");
    expect(rest).toEqual([]);
    expect(problem).toMatch(/^objectStore\.uri file:\/\/\/var\/kiln needs objectStore\.volume: /);
    expect(problem).toMatch(/\{nfs: \{server, path\}\}/);
    expect(problem).toMatch(/\(env KILN_STORE_VOLUME or objectStore\.volume in KILN_CONFIG_FILE\)$/);
  });

  it("refuses a volume for an s3:// store, which would never be mounted", () => {
    expect(storeProblems("s3://engines/kiln", "{nfs: {server: nas, path: /x}}")).toEqual([
      expect.stringMatching(
        /^objectStore\.volume is set but objectStore\.uri s3:\/\/engines\/kiln is not file:\/\/: .*remove objectStore\.volume/,
      ),
    ]);
  });

  it.each([
    ["not a mapping", "[a, b]", /^objectStore\.volume must be a Kubernetes volume source/],
    [
      "two sources",
      "{nfs: {server: a, path: /x}, hostPath: {path: /y}}",
      /exactly one volume source.*got nfs, hostPath/,
    ],
    ["a named volume", "{name: store, nfs: {server: a, path: /x}}", /exactly one volume source/],
    [
      "an unknown source",
      "{s3fs: {bucket: b}}",
      /^objectStore\.volume\.s3fs: not a Kubernetes volume source/,
    ],
    [
      "a per-pod emptyDir",
      "{emptyDir: {}}",
      /^objectStore\.volume\.emptyDir: each pod would get its own copy/,
    ],
    [
      "a source without settings",
      "{hostPath: /srv/kiln}",
      /^objectStore\.volume\.hostPath must be a mapping/,
    ],
    ["text that is not YAML", "{nfs: [", /^objectStore\.volume: env KILN_STORE_VOLUME is not YAML or JSON/],
  ])("refuses a store volume that is %s", (_, volume, message) => {
    const problems = storeProblems("file:///var/kiln", volume);
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(message);
  });

  it.each([
    ["the root directory", "file:///", /the store cannot be the root directory/],
    ["a remote host", "file://nas/var/kiln", /not a local file URI/],
    ["the claims' mount root", "file:///mnt/kiln/pvc/store", /overlaps \/mnt\/kiln\/pvc/],
    ["a parent of the claims' mount root", "file:///mnt/kiln", /overlaps \/mnt\/kiln\/pvc/],
  ])("refuses a file:// store at %s", (_, uri, message) => {
    expect(storeProblems(uri, "{hostPath: {path: /srv/kiln}}")).toEqual([expect.stringMatching(message)]);
  });

  const builderProblems = (resources: string, extra: Record<string, string> = {}) => {
    try {
      loadConfig({ ...env, ...extra, KILN_BUILDER_RESOURCES: resources }, () => "");
    } catch (err) {
      return (err as ConfigError).problems;
    }
    return [];
  };

  it("takes build Job requests and limits from the file or as YAML in the environment; none by default", () => {
    expect(loadConfig(env, () => "").defaults.builderResources).toEqual({});
    const file =
      "defaults:\n  builderResources:\n    requests: {cpu: 8, memory: 64Gi}\n    limits: {memory: 96Gi, ephemeral-storage: 200Gi}\n";
    const fromFile = loadConfig({ ...env, KILN_CONFIG_FILE: "f" }, () => file).defaults.builderResources;
    // Quantities as strings, whether YAML read them as numbers or not.
    expect(fromFile).toEqual({
      requests: { cpu: "8", memory: "64Gi" },
      limits: { memory: "96Gi", "ephemeral-storage": "200Gi" },
    });
    const fromEnv = loadConfig({ ...env, KILN_BUILDER_RESOURCES: '{"requests": {"cpu": "500m"}}' }, () => "");
    expect(fromEnv.defaults.builderResources).toEqual({ requests: { cpu: "500m" } });
    // Live like the other defaults.
    const current = loadConfig(env, () => "");
    expect(applyConfigChange(current, fromEnv).changed).toEqual(["defaults"]);
    expect(current.defaults.builderResources).toEqual({ requests: { cpu: "500m" } });
  });

  it.each(["1", "0.5", ".5", "500m", "64Gi", "1.5Ti", "128M", "1e3", "2E6", "4k"])(
    "accepts the quantity %s",
    (quantity) => {
      expect(builderProblems(`{limits: {memory: "${quantity}"}}`)).toEqual([]);
    },
  );

  it.each([
    [
      "a quantity with a space",
      '{requests: {memory: "64 GB"}}',
      /^defaults\.builderResources\.requests\.memory: "64 GB" is not a Kubernetes quantity \(e\.g\. 8, 500m, 64Gi\) \(env KILN_BUILDER_RESOURCES or defaults\.builderResources in KILN_CONFIG_FILE\)$/,
    ],
    [
      "a lowercase binary suffix",
      "{limits: {memory: 64gi}}",
      /^defaults\.builderResources\.limits\.memory: "64gi" is not a Kubernetes quantity/,
    ],
    [
      "a negative quantity",
      "{requests: {cpu: -1}}",
      /^defaults\.builderResources\.requests\.cpu: -1 is not a Kubernetes quantity/,
    ],
    [
      "a quantity that is a mapping",
      "{requests: {cpu: {n: 1}}}",
      /^defaults\.builderResources\.requests\.cpu: \{"n":1\} is not/,
    ],
    [
      "a misspelt section",
      "{request: {cpu: 1}}",
      /^defaults\.builderResources\.request: unknown key \(known: requests, limits\)/,
    ],
    ["a list", "[cpu, memory]", /^defaults\.builderResources must be a mapping of requests and limits/],
    [
      "a section that is not a mapping",
      "{limits: 64Gi}",
      /^defaults\.builderResources\.limits must map resource names to quantities/,
    ],
    [
      "a request above its limit",
      "{requests: {memory: 96Gi}, limits: {memory: 64Gi}}",
      /^defaults\.builderResources\.requests\.memory \(96Gi\) must not exceed defaults\.builderResources\.limits\.memory \(64Gi\)/,
    ],
    [
      "a request above its limit in other units",
      "{requests: {cpu: 1500m}, limits: {cpu: 1}}",
      /requests\.cpu \(1500m\) must not exceed/,
    ],
    [
      "text that is not YAML",
      "{requests: [",
      /^defaults\.builderResources: env KILN_BUILDER_RESOURCES is not YAML or JSON/,
    ],
  ])("refuses builder resources with %s, naming the key", (_, resources, message) => {
    const problems = builderProblems(resources);
    expect(problems).toHaveLength(1);
    expect(problems[0]).toMatch(message);
  });

  it("refuses builder resources that name the GPU resource: the operator's GPU limit must stand", () => {
    expect(builderProblems("{limits: {nvidia.com/gpu: 2}}")).toEqual([
      expect.stringMatching(
        /^defaults\.builderResources\.limits\.nvidia\.com\/gpu: the operator sets the GPU limit of build Jobs itself/,
      ),
    ]);
    // The configured GPU resource, whatever it is called.
    const custom = { KILN_GPU_RESOURCE: "example.com/gpu" };
    expect(builderProblems("{requests: {example.com/gpu: 1}}", custom)).toEqual([
      expect.stringMatching(/^defaults\.builderResources\.requests\.example\.com\/gpu: the operator sets/),
    ]);
    expect(builderProblems("{requests: {nvidia.com/gpu: 1}}", custom)).toEqual([]);
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
