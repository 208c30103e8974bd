import { describe, expect, it } from "vitest";
import { PVC_MOUNT_ROOT } from "../../lib/manifest.js";
import type { OperatorConfig } from "../src/config.js";
import { claimMountsFor } from "../src/enginebuild/claims.js";
import { desiredJob } from "../src/enginebuild/job.js";
import { desiredDeployment } from "../src/inferencemodel/workload.js";
import { STORE_VOLUME_NAME } from "../src/store-volume.js";
import { config, engineBuildFor, model } from "./fixtures.js";

// A file:// store reaches build Jobs and runtime pods only as the volume the configuration names,
// mounted at the uri's path: read-write where the builder publishes, read-only where the runtime reads.

const fileStore: OperatorConfig = {
  ...config,
  objectStore: {
    ...config.objectStore,
    uri: "file:///var/lib/kiln/store",
    volume: { nfs: { server: "nas.lan", path: "/exports/kiln" } },
  },
};
const storeVolume = { name: STORE_VOLUME_NAME, nfs: { server: "nas.lan", path: "/exports/kiln" } };
const engine = {
  key: "k".repeat(64),
  uri: `file:///var/lib/kiln/store/engines/${"k".repeat(64)}/engine.kiln`,
  sha256: "a".repeat(64),
  toolchain: "0.1.0",
  build: "m-build",
};

const mountsOf = (build = engineBuildFor("m", { model: { source: "pvc://models/llama" } })) => {
  const claims = claimMountsFor(build.spec);
  if (!claims.ok) throw new Error(claims.errors.join("; "));
  return { build, claims: claims.mounts };
};

describe("a file:// store's volume", () => {
  it("is mounted read-write at the store's path in the build Job, beside the claims of pvc:// inputs", () => {
    const { build, claims } = mountsOf();
    const pod = desiredJob(build, 1, fileStore, claims).spec?.template.spec;
    expect(pod?.volumes).toEqual([
      { name: "pvc-0", persistentVolumeClaim: { claimName: "models", readOnly: true } },
      storeVolume,
    ]);
    expect(pod?.containers[0]?.volumeMounts).toEqual([
      { name: "pvc-0", mountPath: `${PVC_MOUNT_ROOT}/models`, readOnly: true },
      { name: STORE_VOLUME_NAME, mountPath: "/var/lib/kiln/store" },
    ]);
    expect(pod?.containers[0]?.env).toContainEqual({
      name: "KILN_STORE_URI",
      value: "file:///var/lib/kiln/store",
    });
  });

  it("is mounted read-only at the store's path in the runtime Deployment's pods", () => {
    const pod = desiredDeployment(model("m"), "H100", engine, fileStore).spec?.template.spec;
    expect(pod?.volumes).toEqual([storeVolume]);
    expect(pod?.containers[0]?.volumeMounts).toEqual([
      { name: STORE_VOLUME_NAME, mountPath: "/var/lib/kiln/store", readOnly: true },
    ]);
    expect(pod?.containers[0]?.env).toContainEqual({ name: "KILN_ENGINE_URI", value: engine.uri });
  });

  it("is absent for an s3:// store: no volumes in either pod", () => {
    const build = engineBuildFor("m");
    const job = desiredJob(build, 1, config, { volumes: [], volumeMounts: [] }).spec?.template.spec;
    const runtime = desiredDeployment(model("m"), "H100", engine, config).spec?.template.spec;
    for (const pod of [job, runtime]) {
      expect(pod?.volumes).toBeUndefined();
      expect(pod?.containers[0]?.volumeMounts).toBeUndefined();
    }
  });
});
