import type { V1Job } from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import { PVC_MOUNT_ROOT } from "../../lib/manifest.js";
import type { InferenceModelSpec } from "../src/api/inferencemodel.js";
import type { EngineBuild } from "../src/api/types.js";
import { claimMountsFor } from "../src/enginebuild/claims.js";
import {
  BuildAdmission,
  type BuildObservation,
  needsProgress,
  PROGRESS_REFRESH_MS,
  planBuild,
} from "../src/enginebuild/reconcile.js";
import type { ManifestCheck } from "../src/enginebuild/result.js";
import { config, engineBuildFor, NOW } from "./fixtures.js";

const validManifest = (key: string): ManifestCheck => ({
  state: "valid",
  engineUri: `s3://engines/kiln/engines/${key}/engine.kiln`,
  manifest: {
    manifestVersion: 1,
    key,
    sha256: "b".repeat(64),
    sizeBytes: 99,
    toolchain: { version: "0.1.0" },
    target: { product: "H100", arch: "sm_90" },
    inputs: {},
    tuning: { gemm: "cublasLt algo 7" },
    builtAt: NOW.toISOString(),
  },
});

const observe = (build: EngineBuild, over: Partial<BuildObservation> = {}): BuildObservation => ({
  build,
  job: undefined,
  manifest: { state: "missing" },
  terminationMessage: undefined,
  admission: { admitted: true },
  config,
  now: NOW,
  ...over,
});

const jobWith = (name: string, condition?: { type: string; reason?: string; message?: string }): V1Job => ({
  metadata: { name },
  status: condition ? { conditions: [{ status: "True", ...condition }] } : { active: 1 },
});

describe("EngineBuild plan", () => {
  it("adopts a Job that status does not record yet (operator stopped after creating it) instead of starting another", () => {
    const b = engineBuildFor();
    const created = planBuild(observe(b)).createJob as V1Job;
    const done: V1Job = { ...created, status: { conditions: [{ type: "Complete", status: "True" }] } };
    const plan = planBuild(observe(b, { job: done, manifest: validManifest(b.spec.key) }));
    expect(plan.createJob).toBeUndefined();
    expect(plan.status).toMatchObject({
      phase: "Succeeded",
      attempts: 1,
      jobName: created.metadata?.name,
      cacheHit: "false",
    });

    const running = planBuild(observe(b, { job: { ...created, status: { active: 1 } } }));
    expect(running.createJob).toBeUndefined();
    expect(running.status).toMatchObject({ phase: "Running", attempts: 1, jobName: created.metadata?.name });
  });

  it("succeeds without a Job when a valid manifest already exists (cache hit)", () => {
    const b = engineBuildFor();
    const plan = planBuild(observe(b, { manifest: validManifest(b.spec.key) }));
    expect(plan.createJob).toBeUndefined();
    expect(plan.status).toMatchObject({
      phase: "Succeeded",
      cacheHit: "true",
      artifact: {
        uri: `s3://engines/kiln/engines/${b.spec.key}/engine.kiln`,
        sha256: "b".repeat(64),
        sizeBytes: 99,
      },
    });
  });

  it("creates attempt 1's Job with builder image, spec env, GPU limit, node selector and limits", () => {
    const b = engineBuildFor();
    const plan = planBuild(observe(b));
    const job = plan.createJob;
    expect(job?.metadata?.name).toBe(`${b.metadata.name}-1`);
    expect(job?.metadata?.ownerReferences?.[0]).toMatchObject({ kind: "EngineBuild", controller: true });
    expect(job?.spec).toMatchObject({
      backoffLimit: 0,
      activeDeadlineSeconds: 14400,
      ttlSecondsAfterFinished: 86400,
    });
    const pod = job?.spec?.template.spec;
    expect(pod?.restartPolicy).toBe("Never");
    expect(pod?.nodeSelector).toEqual({ "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3" });
    const c = pod?.containers[0];
    expect(c?.image).toBe("kiln/builder:0.1.0");
    expect(c?.resources?.limits).toEqual({ "nvidia.com/gpu": "1" });
    expect(c?.terminationMessagePath).toBe("/dev/termination-log");
    expect(JSON.parse(c?.env?.find((e) => e.name === "KILN_BUILD_SPEC")?.value ?? "{}")).toEqual(b.spec);
    expect(plan.status).toMatchObject({ phase: "Running", attempts: 1, jobName: `${b.metadata.name}-1` });
  });

  it("passes the model's credentials Secret by reference, prefixed so it cannot shadow the store's", () => {
    const b = engineBuildFor();
    const withSecret = {
      ...b,
      spec: { ...b.spec, model: { ...b.spec.model, credentialsSecret: "hf-token" } },
    };
    expect(planBuild(observe(withSecret)).createJob?.spec?.template.spec?.containers[0]?.envFrom).toEqual([
      { secretRef: { name: "hf-token" }, prefix: "KILN_MODEL_" },
    ]);
  });

  it("waits as Queued with its position when the build limit is reached", () => {
    const plan = planBuild(observe(engineBuildFor(), { admission: { admitted: false, position: 3 } }));
    expect(plan.createJob).toBeUndefined();
    expect(plan.status).toMatchObject({ phase: "Queued", queuePosition: 3 });
  });

  it("reads the manifest when the Job completes and records artifact and tuning", () => {
    const b = engineBuildFor();
    const running = { ...b, status: { phase: "Running" as const, attempts: 1, jobName: "j" } };
    const plan = planBuild(
      observe(running, { job: jobWith("j", { type: "Complete" }), manifest: validManifest(b.spec.key) }),
    );
    expect(plan.status).toMatchObject({
      phase: "Succeeded",
      cacheHit: "false",
      tuning: { gemm: "cublasLt algo 7" },
    });
    expect(plan.event?.reason).toBe("Built");
  });

  it("shows the builder's progress while the Job runs, re-read every 10 s, and drops it once Succeeded", () => {
    const b = engineBuildFor();
    const running = { ...b, status: { phase: "Running" as const, attempts: 1, jobName: "j" } };
    const progress = {
      phase: "compile",
      percent: 40,
      message: "autotune: gemm 3/8",
      updatedAt: NOW.toISOString(),
    };
    const plan = planBuild(observe(running, { job: jobWith("j"), progress }));
    expect(plan.status).toMatchObject({ phase: "Running", progress });
    expect(plan.requeueAfterMs).toBe(PROGRESS_REFRESH_MS);

    const later = { ...running, status: plan.status };
    const done = planBuild(
      observe(later, { job: jobWith("j", { type: "Complete" }), manifest: validManifest(b.spec.key) }),
    );
    expect(done.status.phase).toBe("Succeeded");
    expect(done.status.progress).toBeUndefined();
  });

  it("keeps a failed build's last progress: where it stopped", () => {
    const b = engineBuildFor();
    const progress = {
      phase: "fetch",
      percent: 12,
      message: "downloading model.safetensors",
      updatedAt: NOW.toISOString(),
    };
    const running = { ...b, status: { phase: "Running" as const, attempts: 1, jobName: "j", progress } };
    const plan = planBuild(
      observe(running, {
        job: jobWith("j", { type: "Failed", reason: "PodFailurePolicy", message: "exit 2" }),
      }),
    );
    expect(plan.status).toMatchObject({ phase: "Failed", progress });
  });

  it("records where a failed attempt stopped from the report read when its Job failed", () => {
    const b = engineBuildFor();
    const running = { ...b, status: { phase: "Running" as const, attempts: 1, jobName: "j" } };
    const failedJob = jobWith("j", { type: "Failed", reason: "BackoffLimitExceeded", message: "exit 1" });
    expect(needsProgress(running, failedJob)).toBe(true);
    const progress = {
      phase: "compile",
      percent: 31,
      message: "fusing qkv",
      updatedAt: NOW.toISOString(),
    };
    const plan = planBuild(observe(running, { job: failedJob, progress }));
    expect(plan.status).toMatchObject({ phase: "Pending", progress });
    expect(plan.status.nextAttemptAt).toBeDefined();
    // Judged: the backoff wait and the terminal phases read nothing more.
    expect(needsProgress({ ...running, status: plan.status }, failedJob)).toBe(false);
    expect(needsProgress({ ...running, status: { phase: "Failed" } }, failedJob)).toBe(false);
    expect(needsProgress(running, jobWith("j", { type: "Complete" }))).toBe(false);
    expect(needsProgress(running, undefined)).toBe(false);
  });

  it("starts a retry's Job without the failed attempt's progress", () => {
    const b = engineBuildFor();
    const progress = { phase: "compile", percent: 60, message: "attempt 1", updatedAt: NOW.toISOString() };
    const backedOff = {
      ...b,
      status: {
        phase: "Pending" as const,
        attempts: 1,
        jobName: "j-1",
        progress,
        nextAttemptAt: new Date(NOW.getTime() - 1).toISOString(),
      },
    };
    const plan = planBuild(observe(backedOff));
    expect(plan.createJob?.metadata?.name).toMatch(/-2$/);
    expect(plan.status.phase).toBe("Running");
    expect(plan.status.progress).toBeUndefined();
  });

  it("does not show a previous attempt's report as the progress of the Job now running", () => {
    const b = engineBuildFor();
    const running = { ...b, status: { phase: "Running" as const, attempts: 2, jobName: "j-2" } };
    const job: V1Job = {
      metadata: { name: "j-2" },
      status: { active: 1, startTime: new Date(NOW.getTime() - 5_000) },
    };
    const stale = {
      phase: "compile",
      percent: 60,
      message: "attempt 1",
      updatedAt: new Date(NOW.getTime() - 60_000).toISOString(),
    };
    expect(planBuild(observe(running, { job, progress: stale })).status.progress).toBeUndefined();
    const fresh = { ...stale, phase: "fetch", percent: 5, updatedAt: NOW.toISOString() };
    expect(planBuild(observe(running, { job, progress: fresh })).status.progress).toEqual(fresh);
  });

  it("shows the manifest's post-build benchmark in status, to three significant figures", () => {
    const b = engineBuildFor();
    const running = { ...b, status: { phase: "Running" as const, attempts: 1, jobName: "j" } };
    const check = validManifest(b.spec.key);
    if (check.state !== "valid") throw new Error("fixture");
    const point = (batchSize: number) => ({
      batchSize,
      ttftMs: 12.3456,
      tpotMs: 4.56789,
      tokensPerSecond: 218.765,
    });
    check.manifest.benchmark = {
      device: "cpu:x86_64:avx2",
      promptTokens: 32,
      outputTokens: 16,
      batch1: point(1),
      maxBatch: point(8),
    };
    const plan = planBuild(observe(running, { job: jobWith("j", { type: "Complete" }), manifest: check }));
    expect(plan.status.benchmark).toEqual({
      device: "cpu:x86_64:avx2",
      promptTokens: 32,
      outputTokens: 16,
      batch1: { batchSize: 1, ttftMs: 12.3, tpotMs: 4.57, tokensPerSecond: 219 },
      maxBatch: { batchSize: 8, ttftMs: 12.3, tpotMs: 4.57, tokensPerSecond: 219 },
    });
  });

  it("counts a completed Job without a manifest as a failed attempt", () => {
    const b = engineBuildFor();
    const running = { ...b, status: { phase: "Running" as const, attempts: 1, jobName: "j" } };
    const plan = planBuild(observe(running, { job: jobWith("j", { type: "Complete" }) }));
    expect(plan.status.phase).toBe("Pending");
    expect(plan.status.message).toMatch(/ManifestMissing/);
  });

  it("retries a failed Job after a growing backoff, then fails with the Job's reason", () => {
    const b = engineBuildFor();
    let status: EngineBuild["status"] = { phase: "Running", attempts: 1, jobName: "j1" };
    const failJob = (name: string) =>
      jobWith(name, { type: "Failed", reason: "BackoffLimitExceeded", message: "pod failed" });

    let plan = planBuild(observe({ ...b, status }, { job: failJob("j1") }));
    expect(plan.status.phase).toBe("Pending");
    expect(plan.requeueAfterMs).toBe(30_000);
    expect(plan.createJob).toBeUndefined();
    status = plan.status;

    // Before the backoff ends nothing happens; after it, attempt 2 starts.
    plan = planBuild(
      observe({ ...b, status }, { job: failJob("j1"), now: new Date(NOW.getTime() + 10_000) }),
    );
    expect(plan.createJob).toBeUndefined();
    expect(plan.requeueAfterMs).toBe(20_000);
    plan = planBuild(
      observe({ ...b, status }, { job: failJob("j1"), now: new Date(NOW.getTime() + 30_000) }),
    );
    expect(plan.createJob?.metadata?.name).toBe(`${b.metadata.name}-2`);
    status = plan.status;
    expect(status).toMatchObject({ phase: "Running", attempts: 2 });

    plan = planBuild(observe({ ...b, status }, { job: failJob(status.jobName ?? "") }));
    expect(plan.requeueAfterMs).toBe(60_000);
    status = { ...plan.status, phase: "Running", attempts: 3, jobName: "j3", nextAttemptAt: undefined };
    plan = planBuild(observe({ ...b, status }, { job: failJob("j3") }));
    expect(plan.status).toMatchObject({ phase: "Failed" });
    expect(plan.status.message).toMatch(/attempt 3\/3: pod failed/);
    expect(plan.status.conditions?.find((c) => c.type === "Ready")?.reason).toBe("BackoffLimitExceeded");
    expect(plan.event?.type).toBe("Warning");
  });

  it("fails at once, without another attempt, when the builder reports a permanent error", () => {
    const b = engineBuildFor();
    const status: EngineBuild["status"] = { phase: "Running", attempts: 1, jobName: "j1" };
    const job = jobWith("j1", {
      type: "Failed",
      reason: "PodFailurePolicy",
      message: "Container builder for pod ns/j1-x failed with exit code 2 matching FailJob rule at index 0",
    });
    const plan = planBuild(observe({ ...b, status }, { job }));
    expect(plan.status.phase).toBe("Failed");
    expect(plan.createJob).toBeUndefined();
    expect(plan.requeueAfterMs).toBeUndefined();
    expect(plan.status.message).toMatch(/no retry can fix: Container builder .* exit code 2/);
    expect(plan.status.conditions?.find((c) => c.type === "Ready")?.reason).toBe("PermanentBuildError");
  });

  it("a failed build's status carries the builder's error from its termination message", () => {
    const b = engineBuildFor();
    const status: EngineBuild["status"] = { phase: "Running", attempts: 1, jobName: "j1" };
    const job = jobWith("j1", { type: "Failed", reason: "PodFailurePolicy", message: "exit code 2" });
    const terminationMessage = JSON.stringify({
      error: "model.source pvc://m/x: no such folder",
      permanent: true,
    });
    const plan = planBuild(observe({ ...b, status }, { job, terminationMessage }));
    expect(plan.status.message).toMatch(/no retry can fix: model\.source pvc:\/\/m\/x: no such folder/);
  });

  it("leaves terminal builds alone", () => {
    const b = engineBuildFor();
    const done = { ...b, status: { phase: "Failed" as const, attempts: 3 } };
    const plan = planBuild(observe(done, { manifest: validManifest(b.spec.key) }));
    expect(plan.status).toBe(done.status);
    expect(plan.createJob).toBeUndefined();
  });
});

describe("BuildAdmission", () => {
  const at = (name: string, created: string, phase?: "Running" | "Queued"): EngineBuild => {
    const b = engineBuildFor(name);
    return {
      ...b,
      metadata: { ...b.metadata, name, creationTimestamp: created },
      ...(phase ? { status: { phase } } : {}),
    };
  };

  it("admits up to the limit in creation order and gives the rest their queue position", () => {
    const admission = new BuildAdmission();
    const builds = [
      at("a", "2025-01-01T00:00:01Z"),
      at("b", "2025-01-01T00:00:02Z"),
      at("c", "2025-01-01T00:00:03Z"),
    ];
    expect(admission.decide(builds[0] as EngineBuild, builds, 2, 0)).toEqual({ admitted: true });
    expect(admission.decide(builds[1] as EngineBuild, builds, 2, 0)).toEqual({ admitted: true });
    expect(admission.decide(builds[2] as EngineBuild, builds, 2, 0)).toEqual({
      admitted: false,
      position: 1,
    });
  });

  it("counts builds it just admitted as running before the cache shows them", () => {
    const admission = new BuildAdmission();
    const builds = [at("a", "2025-01-01T00:00:01Z"), at("b", "2025-01-01T00:00:02Z")];
    admission.markAdmitted(builds[0] as EngineBuild);
    expect(admission.decide(builds[1] as EngineBuild, builds, 1, 0)).toEqual({
      admitted: false,
      position: 1,
    });
  });
});

const planFor = (build: EngineBuild) => planBuild(observe(build));
const buildFor = (spec: Partial<InferenceModelSpec>) => engineBuildFor("m", spec);

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
