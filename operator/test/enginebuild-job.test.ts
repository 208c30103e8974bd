import { describe, expect, it } from "vitest";
import { PVC_MOUNT_ROOT } from "../../lib/manifest.js";
import type { InferenceModelSpec } from "../src/api/inferencemodel.js";
import type { EngineBuild } from "../src/api/types.js";
import { claimMountsFor } from "../src/enginebuild/claims.js";
import { planBuild } from "../src/enginebuild/reconcile.js";
import { config, engineBuildFor, NOW } from "./fixtures.js";

const buildFor = (spec: Partial<InferenceModelSpec>) => engineBuildFor("m", spec);

const planFor = (build: EngineBuild) =>
  planBuild({
    build,
    job: undefined,
    manifest: { state: "missing" },
    terminationMessage: undefined,
    admission: { admitted: true },
    config,
    now: NOW,
  });

describe("build Job mounts of pvc:// inputs", () => {
  it("mounts the source's claim read-only where the builder resolves pvc://<claim>/", () => {
    const job = planFor(buildFor({ model: { source: "pvc://models/llama-3/8b" } })).createJob;
    const pod = job?.spec?.template.spec;
    expect(pod?.volumes).toEqual([
      { name: "pvc-0", persistentVolumeClaim: { claimName: "models", readOnly: true } },
    ]);
    expect(pod?.containers[0]?.volumeMounts).toEqual([
      { name: "pvc-0", mountPath: `${PVC_MOUNT_ROOT}/models`, readOnly: true },
    ]);
  });

  it("mounts a pvc:// calibration set's claim too, each claim once", () => {
    const twoClaims = buildFor({
      model: { source: "pvc://models/llama" },
      engine: { precision: "fp8", calibration: { dataset: "pvc://datasets/calib.txt" } },
    });
    expect(claimMountsFor(twoClaims.spec)).toMatchObject({
      ok: true,
      mounts: {
        volumes: [
          { persistentVolumeClaim: { claimName: "models" } },
          { persistentVolumeClaim: { claimName: "datasets" } },
        ],
        volumeMounts: [
          { mountPath: `${PVC_MOUNT_ROOT}/models` },
          { mountPath: `${PVC_MOUNT_ROOT}/datasets` },
        ],
      },
    });
    const oneClaim = buildFor({
      model: { source: "pvc://models/llama" },
      engine: { precision: "fp8", calibration: { dataset: "pvc://models/calib.txt" } },
    });
    const plan = claimMountsFor(oneClaim.spec);
    expect(plan.ok && plan.mounts.volumes.map((v) => v.persistentVolumeClaim?.claimName)).toEqual(["models"]);
  });

  it("mounts nothing for hf:// and s3:// sources", () => {
    for (const source of ["hf://TinyLlama/TinyLlama-1.1B-Chat-v1.0", "s3://bucket/llama"]) {
      const pod = planFor(buildFor({ model: { source } })).createJob?.spec?.template.spec;
      expect(pod?.volumes).toBeUndefined();
      expect(pod?.containers[0]?.volumeMounts).toBeUndefined();
    }
  });

  it("fails the build without a Job when the claim name is not a valid PersistentVolumeClaim name", () => {
    const plan = planFor(buildFor({ model: { source: "pvc://My_Models/llama" } }));
    expect(plan.createJob).toBeUndefined();
    expect(plan.status.phase).toBe("Failed");
    expect(plan.status.conditions?.[0]?.reason).toBe("InvalidSource");
    expect(plan.status.message).toMatch(
      /spec\.model\.source pvc:\/\/My_Models\/llama: claim name "My_Models" is not a valid PersistentVolumeClaim name/,
    );
    expect(plan.event).toMatchObject({ type: "Warning", reason: "InvalidSource" });
  });

  it("fails the build when a pvc:// source names no path inside the claim", () => {
    const plan = planFor(buildFor({ model: { source: "pvc://models/" } }));
    expect(plan.createJob).toBeUndefined();
    expect(plan.status.message).toMatch(/expected pvc:\/\/<claim>\/<path>/);
  });
});
