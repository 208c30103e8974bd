// The chart as helm renders and validates it: lint, the objects it renders, the configuration it
// hands the operator, and values the schema turns away at `helm install` (against the real cluster).
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { V1Deployment } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GPU_PRODUCT_NAMES } from "../../operator/src/api/gpu.js";
import { QUANTITY_PATTERN } from "../../operator/src/builder-resources.js";
import { CONFIG_MAP_KEY, ConfigError, loadConfig } from "../../operator/src/config.js";
import { STORE_VOLUME_NAME } from "../../operator/src/store-volume.js";
import { pinnedVersion } from "../../test/cluster/binaries.js";
import { CHART_DIR, Helm, type RenderedObject } from "./helm.js";

const STORE = "objectStore.uri=s3://engines/kiln";
let helm: Helm;

beforeAll(async () => {
  helm = await Helm.create();
});
afterAll(async () => {
  await helm.dispose();
});

const byKind = (objects: RenderedObject[], kind: string) => objects.filter((o) => o.kind === kind);
const one = <T>(objects: RenderedObject[], kind: string) => {
  const found = byKind(objects, kind);
  expect(found, kind).toHaveLength(1);
  return found[0] as unknown as T;
};
const configOf = (objects: RenderedObject[]) => {
  const cm = one<{ metadata: { name: string }; data: Record<string, string> }>(objects, "ConfigMap");
  return loadConfig({}, undefined, {
    source: `ConfigMap ${cm.metadata.name}`,
    text: cm.data[CONFIG_MAP_KEY] ?? "",
  });
};

describe("helm lint and template", () => {
  it("lint passes in strict mode, with and without the ServiceMonitor", async () => {
    for (const extra of [[], ["--set", "metrics.serviceMonitor.enabled=true"]]) {
      const out = await helm.ok(
        "lint",
        CHART_DIR,
        "--strict",
        "--kube-version",
        pinnedVersion("kube-apiserver"),
        "--set",
        STORE,
        ...extra,
      );
      expect(out).toContain("0 chart(s) failed");
    }
  });

  it("renders the CRDs, RBAC, operator Deployment, ConfigMap, metrics Service and PDB", async () => {
    const objects = await helm.template([STORE]);
    expect(objects.map((o) => `${o.kind}/${o.metadata?.name}`).sort()).toEqual(
      [
        "ClusterRole/kiln",
        "ClusterRoleBinding/kiln",
        "ConfigMap/kiln-config",
        "CustomResourceDefinition/enginebuilds.kiln.dev",
        "CustomResourceDefinition/inferencemodels.kiln.dev",
        "Deployment/kiln",
        "PodDisruptionBudget/kiln",
        "Role/kiln",
        "RoleBinding/kiln",
        "Service/kiln-metrics",
        "ServiceAccount/kiln",
      ].sort(),
    );
    const monitored = await helm.template([STORE, "metrics.serviceMonitor.enabled=true"]);
    expect(byKind(monitored, "ServiceMonitor")).toHaveLength(1);
    const external = await helm.template([STORE, "crds.install=false"]);
    expect(byKind(external, "CustomResourceDefinition")).toHaveLength(0);
  });

  it("keeps the CRDs on uninstall", async () => {
    for (const crd of byKind(await helm.template([STORE]), "CustomResourceDefinition")) {
      expect(crd.metadata?.annotations?.["helm.sh/resource-policy"]).toBe("keep");
    }
  });

  it("runs the operator hardened, probed, leader-elected and configured only through its ConfigMap", async () => {
    const objects = await helm.template([STORE]);
    const deployment = one<V1Deployment>(objects, "Deployment");
    const pod = deployment.spec?.template.spec;
    const container = pod?.containers[0];
    expect(pod?.securityContext).toMatchObject({
      runAsNonRoot: true,
      seccompProfile: { type: "RuntimeDefault" },
    });
    expect(container?.securityContext).toEqual({
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      runAsNonRoot: true,
      capabilities: { drop: ["ALL"] },
      seccompProfile: { type: "RuntimeDefault" },
    });
    expect(container?.livenessProbe?.httpGet?.path).toBe("/healthz");
    expect(container?.readinessProbe?.httpGet?.path).toBe("/readyz");
    expect(container?.resources?.requests).toBeDefined();
    expect(container?.resources?.limits?.memory).toBeDefined();
    expect(deployment.spec?.replicas).toBeGreaterThan(1);
    // Environment variables win over the ConfigMap, so any KILN_* setting here would stop a
    // `helm upgrade` of that setting from reaching the running operator.
    expect(container?.env?.map((e) => e.name).sort()).toEqual([
      "KILN_CONFIG_MAP",
      "NODE_ENV",
      "NODE_OPTIONS",
      "POD_NAME",
    ]);
    // V8's old space has to fit the container with the RSS that is not heap (~150 MB measured).
    const oldSpaceMb = Number(
      /--max-old-space-size=(\d+)/.exec(
        container?.env?.find((e) => e.name === "NODE_OPTIONS")?.value ?? "",
      )?.[1],
    );
    const limitMi = Number(/^(\d+)Mi$/.exec(String(container?.resources?.limits?.memory))?.[1]);
    expect(oldSpaceMb + 150).toBeLessThanOrEqual(limitMi);
    expect(container?.env?.find((e) => e.name === "KILN_CONFIG_MAP")?.value).toBe("kiln-system/kiln-config");
    const config = configOf(objects);
    expect(config.leaderElection).toMatchObject({ namespace: "kiln-system", name: "kiln-operator" });
    expect(container?.ports?.[0]?.containerPort).toBe(config.http.port);
  });

  it("hands the operator a configuration it accepts, with every value as given", async () => {
    const config = configOf(
      await helm.template(
        [
          "objectStore.uri=s3://engines/prod",
          "objectStore.endpoint=http://minio.storage:9000",
          "objectStore.region=eu-west-1",
          "objectStore.credentialsSecret=kiln-store",
          "limits.maxConcurrentBuilds=7",
          "limits.buildAttempts=5",
          "defaults.gpuNodeSelectors.H100.pool=h100",
          "defaults.gpuResource=example.com/gpu",
          "defaults.builderResources.requests.cpu=8",
          "defaults.builderResources.requests.memory=64Gi",
          "defaults.builderResources.limits.memory=96Gi",
          "reconcileConcurrency=9",
        ],
        "--set-string",
        "toolchain.version=2.0",
      ),
    );
    expect(config.toolchain).toEqual({
      version: "2.0",
      builderImage: "ghcr.io/kiln-dev/kiln-builder:2.0",
      runtimeImage: "ghcr.io/kiln-dev/kiln-runtime:2.0",
    });
    expect(config.objectStore).toEqual({
      uri: "s3://engines/prod",
      endpoint: "http://minio.storage:9000",
      region: "eu-west-1",
      credentialsSecret: "kiln-store",
    });
    expect(config.limits).toMatchObject({ maxConcurrentBuilds: 7, buildAttempts: 5 });
    expect(config.defaults.gpuNodeSelectors.H100).toEqual({ pool: "h100" });
    // Products not overridden keep the operator's defaults.
    expect(config.defaults.gpuNodeSelectors.H200).toEqual({ "nvidia.com/gpu.product": "NVIDIA-H200" });
    expect(config.defaults.gpuResource).toBe("example.com/gpu");
    expect(config.defaults.builderResources).toEqual({
      requests: { cpu: "8", memory: "64Gi" },
      limits: { memory: "96Gi" },
    });
    expect(config.reconcileConcurrency).toBe(9);
  });

  it("mounts a file:// store's volume read-only in the operator and hands the operator both", async () => {
    const values = [
      "objectStore.uri=file:///srv/kiln/store",
      "objectStore.volume.nfs.server=nas.example.com",
      "objectStore.volume.nfs.path=/exports/kiln",
    ];
    const objects = await helm.template(values);
    const pod = one<V1Deployment>(objects, "Deployment").spec?.template.spec;
    expect(pod?.volumes).toContainEqual({
      name: STORE_VOLUME_NAME,
      nfs: { server: "nas.example.com", path: "/exports/kiln" },
    });
    expect(pod?.containers[0]?.volumeMounts).toContainEqual({
      name: STORE_VOLUME_NAME,
      mountPath: "/srv/kiln/store",
      readOnly: true,
    });
    expect(configOf(objects).objectStore).toMatchObject({
      uri: "file:///srv/kiln/store",
      volume: { nfs: { server: "nas.example.com", path: "/exports/kiln" } },
    });
    const s3 = one<V1Deployment>(await helm.template([STORE]), "Deployment").spec?.template.spec;
    expect(s3?.volumes?.map((v) => v.name)).toEqual(["tmp"]);
  });

  it("rolls the operator for settings it reads at start, not for a toolchain bump it applies live", async () => {
    const checksum = async (...values: string[]) =>
      one<V1Deployment>(await helm.template([STORE, ...values]), "Deployment").spec?.template.metadata
        ?.annotations?.["checksum/startup-config"];
    const base = await checksum();
    expect(await checksum("toolchain.version=0.2.0", "limits.maxConcurrentBuilds=9")).toBe(base);
    expect(await checksum("objectStore.region=eu-west-1")).not.toBe(base);
    expect(await checksum("leaderElection.leaseDurationSeconds=30")).not.toBe(base);
    expect(await checksum("reconcileConcurrency=8")).not.toBe(base);
    const fileStore = ["objectStore.uri=file:///srv/kiln", "objectStore.volume.hostPath.path=/srv/kiln"];
    expect(await checksum(...fileStore)).not.toBe(
      await checksum(fileStore[0] ?? "", "objectStore.volume.hostPath.path=/mnt/nas/kiln"),
    );
  });
});

interface IntegerSchema {
  minimum: number;
  maximum: number;
}
const schema = JSON.parse(readFileSync(join(CHART_DIR, "values.schema.json"), "utf8")) as {
  properties: Record<string, { properties: Record<string, IntegerSchema & { properties?: unknown }> }>;
  $defs: { quantity: { anyOf: { pattern?: string }[] } };
};

// Integer settings as [values path, path in the operator's configuration].
const integerSettings = [
  ...Object.keys(schema.properties.limits?.properties ?? {}).map((k) => [`limits.${k}`, `limits.${k}`]),
  ...["leaseDurationSeconds", "renewDeadlineSeconds", "retryPeriodSeconds"].map((k) => [
    `leaderElection.${k}`,
    `leaderElection.${k}`,
  ]),
  ["reconcileConcurrency", "reconcileConcurrency"],
] as const;

const boundsOf = (valuesPath: string): IntegerSchema => {
  const [section, key] = valuesPath.split(".");
  const node = key ? schema.properties[section ?? ""]?.properties[key] : schema.properties[section ?? ""];
  if (!node) throw new Error(`values.schema.json has no ${valuesPath}`);
  return node as unknown as IntegerSchema;
};

describe("values.schema.json agrees with the operator's configuration", () => {
  it("lists exactly the operator's GPU products", () => {
    const selectors = schema.properties.defaults?.properties.gpuNodeSelectors?.properties as object;
    expect(Object.keys(selectors).sort()).toEqual([...GPU_PRODUCT_NAMES].sort());
  });

  it("checks builder resource quantities with the operator's pattern", () => {
    const builder = schema.properties.defaults?.properties.builderResources as unknown as {
      properties: Record<string, { additionalProperties: { $ref?: string } }>;
    };
    for (const section of ["requests", "limits"]) {
      expect(builder.properties[section]?.additionalProperties.$ref).toBe("#/$defs/quantity");
    }
    expect(schema.$defs.quantity.anyOf[0]?.pattern).toBe(QUANTITY_PATTERN.source);
  });

  it.each(integerSettings)("%s has the operator's bounds", (valuesPath, configPath) => {
    const { minimum, maximum } = boundsOf(valuesPath);
    const doc = (value: number) => {
      const [section = "", key] = configPath.split(".");
      // The lease timings are checked against each other: the other one is set out of the way.
      const setting = !key
        ? { [section]: value }
        : section === "leaderElection"
          ? { leaderElection: { leaseDurationSeconds: 300, renewDeadlineSeconds: 1, [key]: value } }
          : { [section]: { [key]: value } };
      const text = JSON.stringify({
        toolchain: { version: "v", builderImage: "b", runtimeImage: "r" },
        objectStore: { uri: "s3://b" },
        ...setting,
      });
      return () => loadConfig({}, undefined, { source: "test", text });
    };
    expect(doc(minimum)).not.toThrow();
    expect(doc(maximum)).not.toThrow();
    expect(doc(minimum - 1)).toThrow(ConfigError);
    expect(doc(maximum + 1)).toThrow(ConfigError);
  });
});

describe("bad values fail `helm install` with a message naming the value", () => {
  const cases: [string, string[], RegExp][] = [
    ["no object store", [], /at '\/objectStore': missing property 'uri'/],
    ["an object store that is not s3://", ["objectStore.uri=gs://bucket"], /\/objectStore\/uri/],
    [
      "a file:// object store without its volume",
      ["objectStore.uri=file:///var/kiln"],
      /objectStore\.uri file:\/\/\/var\/kiln needs objectStore\.volume: .*--set objectStore\.volume\.nfs\.server=/,
    ],
    [
      "a volume for an s3:// object store",
      [STORE, "objectStore.volume.nfs.path=/exports/kiln"],
      /objectStore\.volume is set but objectStore\.uri s3:\/\/engines\/kiln is not file:\/\//,
    ],
    [
      "a store volume with two sources",
      [
        "objectStore.uri=file:///var/kiln",
        "objectStore.volume.nfs.path=/x",
        "objectStore.volume.hostPath.path=/y",
      ],
      /at '\/objectStore\/volume': maxProperties/,
    ],
    ["a file:// object store at the root directory", ["objectStore.uri=file:///"], /\/objectStore\/uri/],
    [
      "a build concurrency of 0",
      [STORE, "limits.maxConcurrentBuilds=0"],
      /at '\/limits\/maxConcurrentBuilds': minimum: got 0, want 1/,
    ],
    [
      "a GPU product the operator does not know",
      [STORE, "defaults.gpuNodeSelectors.B300.pool=b300"],
      /at '\/defaults\/gpuNodeSelectors': additional properties 'B300' not allowed/,
    ],
    [
      "a builder memory request that is not a quantity",
      [STORE, "defaults.builderResources.requests.memory=64 GB"],
      /at '\/defaults\/builderResources\/requests\/memory': '64 GB' does not match pattern/,
    ],
    [
      "a builder limit of the GPU resource, which the operator sets",
      [STORE, "defaults.builderResources.limits.nvidia\\.com/gpu=2"],
      /defaults\.builderResources\.limits\.nvidia\.com\/gpu: the operator sets the GPU limit of build Jobs itself/,
    ],
    ["a misspelt setting", [STORE, "toolchain.verison=0.2.0"], /additional properties 'verison' not allowed/],
    [
      "a toolchain version helm reads as a number",
      [STORE, "toolchain.version=2"],
      /at '\/toolchain\/version': got number, want string/,
    ],
    [
      "a writable root filesystem",
      [STORE, "securityContext.readOnlyRootFilesystem=false"],
      /at '\/securityContext\/readOnlyRootFilesystem': value must be true/,
    ],
    [
      "a lease renew deadline not below the lease duration",
      [STORE, "leaderElection.renewDeadlineSeconds=20"],
      /leaderElection.renewDeadlineSeconds \(20\) must be below leaderElection.leaseDurationSeconds \(15\)/,
    ],
  ];

  it.each(cases)("%s", async (_, values, message) => {
    const release = `bad-${Math.random().toString(16).slice(2, 8)}`;
    const r = await helm.run(
      "install",
      release,
      CHART_DIR,
      "--namespace",
      "default",
      ...values.flatMap((v) => ["--set", v]),
    );
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(message);
    // Rejected before anything reached the cluster: not even a failed release is recorded.
    expect((await helm.run("status", release, "--namespace", "default")).stderr).toMatch(
      /release: not found/,
    );
  });
});
