import type { V1Job, V1Pod } from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import { PVC_MOUNT_ROOT } from "../../lib/manifest.js";
import type { ObjectStore } from "../../lib/object-store.js";
import type { InferenceModelSpec } from "../src/api/inferencemodel.js";
import type { EngineBuild } from "../src/api/types.js";
import type { OperatorConfig } from "../src/config.js";
import { type KubeClient, type KubeObject, objectKey } from "../src/controller/kube.js";
import { claimMountsFor } from "../src/enginebuild/claims.js";
import {
  BuildAdmission,
  type BuildContext,
  type BuildObservation,
  needsManifest,
  needsProgress,
  PROGRESS_REFRESH_MS,
  planBuild,
  reconcileBuild,
  WAITING_FOR_SHARED_BUILD,
} from "../src/enginebuild/reconcile.js";
import { builderOomKill, type ManifestCheck } from "../src/enginebuild/result.js";
import { planModel } from "../src/inferencemodel/reconcile.js";
import { silentLog } from "./fakes.js";
import { config, engineBuildFor, firstPlanOf, model, NOW } from "./fixtures.js";

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

describe("an OOM-killed builder", () => {
  /** A build pod whose builder ended with `reason`, created `created`, with a memory limit if given. */
  const pod = (name: string, created: string, reason: string, memory?: string): V1Pod => ({
    metadata: { name, creationTimestamp: created as unknown as Date },
    spec: {
      containers: [
        { name: "builder", resources: { limits: { "nvidia.com/gpu": "1", ...(memory ? { memory } : {}) } } },
      ],
    },
    status: {
      phase: "Failed",
      containerStatuses: [
        {
          name: "builder",
          image: "builder",
          imageID: "",
          ready: false,
          restartCount: 0,
          state: { terminated: { exitCode: reason === "OOMKilled" ? 137 : 1, reason } },
        },
      ],
    },
  });
  const T1 = "2026-01-01T00:00:01Z";
  const T2 = "2026-01-01T00:00:02Z";

  it("reads the OOM kill and the memory limit from the newest finished pod", () => {
    expect(builderOomKill([pod("a", T1, "OOMKilled", "40Gi")])).toEqual({ memoryLimit: "40Gi" });
    expect(builderOomKill([pod("a", T1, "OOMKilled")])).toEqual({ memoryLimit: undefined });
    // The newest pod says how the attempt ended, whatever order the list has.
    expect(builderOomKill([pod("b", T2, "OOMKilled", "8Gi"), pod("a", T1, "Error")])).toEqual({
      memoryLimit: "8Gi",
    });
    expect(builderOomKill([pod("a", T1, "OOMKilled", "8Gi"), pod("b", T2, "Error")])).toBeUndefined();
    expect(builderOomKill([pod("a", T1, "Error")])).toBeUndefined();
    expect(builderOomKill([])).toBeUndefined();
  });

  const b = engineBuildFor();
  const failed = jobWith("j1", {
    type: "Failed",
    reason: "BackoffLimitExceeded",
    message: "Job has reached the specified backoff limit",
  });

  it("names the kill, the limit and the setting in the retry and the final failure, keeping the retries", () => {
    const oomKill = { memoryLimit: "40Gi" };
    const first = planBuild(
      observe({ ...b, status: { phase: "Running", attempts: 1, jobName: "j1" } }, { job: failed, oomKill }),
    );
    expect(first.status.phase).toBe("Pending");
    expect(first.status.message).toBe(
      "attempt 1 failed (BackoffLimitExceeded: builder OOMKilled at its memory limit 40Gi: raise defaults.builderResources.limits.memory and requests.memory; a build needs about 4 bytes per model parameter); retrying",
    );
    const last = planBuild(
      observe({ ...b, status: { phase: "Running", attempts: 3, jobName: "j1" } }, { job: failed, oomKill }),
    );
    expect(last.status.phase).toBe("Failed");
    expect(last.status.message).toMatch(
      /^attempt 3\/3: builder OOMKilled at its memory limit 40Gi: raise defaults\.builderResources\.limits\.memory/,
    );
    expect(last.status.conditions?.find((c) => c.type === "Ready")).toMatchObject({
      reason: "BackoffLimitExceeded",
      message: last.status.message,
    });
  });

  it("says the node ran out when the builder had no limit", () => {
    const plan = planBuild(
      observe(
        { ...b, status: { phase: "Running", attempts: 3, jobName: "j1" } },
        { job: failed, oomKill: { memoryLimit: undefined } },
      ),
    );
    expect(plan.status.message).toBe(
      "attempt 3/3: builder OOMKilled with no memory limit, its node out of memory: set defaults.builderResources.requests.memory and limits.memory; a build needs about 4 bytes per model parameter",
    );
  });

  it("leaves other failures' messages as they were", () => {
    const plan = planBuild(
      observe({ ...b, status: { phase: "Running", attempts: 3, jobName: "j1" } }, { job: failed }),
    );
    expect(plan.status.message).toBe("attempt 3/3: Job has reached the specified backoff limit");
  });

  it("reaches the EngineBuild through the pods reconcile lists, and the InferenceModel's condition", async () => {
    const running: EngineBuild = { ...b, status: { phase: "Running", attempts: 3, jobName: "j1" } };
    const job: V1Job = { ...failed, metadata: { name: "j1", namespace: b.metadata.namespace } };
    let written: EngineBuild | undefined;
    const ctx: BuildContext = {
      client: {
        get: async () => undefined,
        list: async (_type: unknown, _ns: string, selector: string) => ({
          items: selector === "job-name=j1" ? [pod("j1-x", T1, "OOMKilled", "40Gi")] : [],
        }),
        replaceStatus: async (_type: unknown, o: EngineBuild) => {
          written = o;
        },
        create: async () => {},
      } as unknown as KubeClient,
      builds: { get: () => running, list: () => [running] } as unknown as BuildContext["builds"],
      jobs: { get: () => job, list: () => [job] } as unknown as BuildContext["jobs"],
      store: { uri: (p: string) => p, get: async () => undefined } as unknown as ObjectStore,
      events: { emit: () => {} },
      config,
      clock: { now: () => NOW.getTime(), setTimeout: () => 0, clearTimeout: () => {} },
      log: silentLog,
      wakeQueued: () => {},
    };
    await reconcileBuild(ctx, new BuildAdmission(), objectKey(running));
    expect(written?.status?.message).toMatch(/^attempt 3\/3: builder OOMKilled at its memory limit 40Gi/);

    const m = model("m");
    const im = planModel({
      model: m,
      revision: "rev1",
      buildsByKey: new Map([[b.spec.key, written as EngineBuild]]),
      ownedBuilds: [written as EngineBuild],
      deployments: [],
      service: undefined,
      config,
      now: NOW,
    });
    expect(im.status.conditions?.find((c) => c.type === "EngineReady")).toMatchObject({
      reason: "BuildFailed",
      message: expect.stringContaining("builder OOMKilled at its memory limit 40Gi"),
    });
  });
});

describe("build Job resources", () => {
  const sized: OperatorConfig = {
    ...config,
    defaults: {
      ...config.defaults,
      builderResources: { requests: { cpu: "8", memory: "64Gi" }, limits: { memory: "96Gi" } },
    },
  };
  const builderOf = (b: EngineBuild, c: OperatorConfig) =>
    planBuild(observe(b, { config: c })).createJob?.spec?.template.spec?.containers[0];

  it("gives the builder the configured requests and limits beside the GPU limit", () => {
    const b = engineBuildFor("m", { gpu: { products: ["H100"], count: 2 }, engine: { tensorParallel: 2 } });
    expect(builderOf(b, sized)?.resources).toEqual({
      requests: { cpu: "8", memory: "64Gi" },
      limits: { memory: "96Gi", "nvidia.com/gpu": "2" },
    });
    // Nothing configured: the GPU limit alone, as before the setting existed.
    expect(builderOf(b, config)?.resources).toEqual({ limits: { "nvidia.com/gpu": "2" } });
  });

  it("keeps the operator's GPU limit over a configuration that names the GPU resource anyway", () => {
    // loadConfig refuses this; a configuration built another way still cannot move the GPU limit.
    const clash: OperatorConfig = {
      ...config,
      defaults: { ...config.defaults, builderResources: { limits: { "nvidia.com/gpu": "8" } } },
    };
    expect(builderOf(engineBuildFor(), clash)?.resources?.limits).toEqual({ "nvidia.com/gpu": "1" });
  });

  it("gives a CPU build the configured requests and limits, and no GPU", () => {
    const b = engineBuildFor("m", { gpu: { products: ["cpu"] } });
    expect(builderOf(b, sized)?.resources).toEqual({
      requests: { cpu: "8", memory: "64Gi" },
      limits: { memory: "96Gi" },
    });
    expect(builderOf(b, config)?.resources).toEqual({});
  });

  it("leaves the engine key and the EngineBuild spec alone: resources do not change the engine", () => {
    const buildWith = (c: OperatorConfig) => firstPlanOf(model("m"), c).createBuilds[0];
    expect(buildWith(sized)?.spec).toEqual(buildWith(config)?.spec);
    expect(buildWith(sized)?.spec.key).toBe(engineBuildFor().spec.key);
  });
});

describe("BuildAdmission", () => {
  const at = (name: string, created: string, phase?: "Running" | "Queued"): EngineBuild => {
    const b = engineBuildFor(name);
    // Distinct engines: builds of one key never compete for slots.
    return {
      ...b,
      spec: { ...b.spec, key: `key-${name}` },
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

describe("one build per engine key across namespaces", () => {
  const inNamespace = (
    namespace: string,
    created: string,
    spec: Partial<InferenceModelSpec> = {},
  ): EngineBuild => {
    const b = engineBuildFor("m", spec);
    return { ...b, metadata: { ...b.metadata, namespace, name: "m", creationTimestamp: created } };
  };
  const permanentFailure = jobWith("m-1", {
    type: "Failed",
    reason: "PodFailurePolicy",
    message: "exit code 2 matching FailJob rule",
  });

  /** A few EngineBuilds under one admission, reconciled as reconcileBuild does, the cache taking each status. */
  const cluster = (builds: EngineBuild[], limit = 2) => {
    const admission = new BuildAdmission();
    const jobs: V1Job[] = [];
    const at = (ns: string) => builds.findIndex((b) => b.metadata.namespace === ns);
    return {
      jobs,
      admission,
      get: (ns: string) => builds[at(ns)] as EngineBuild,
      reconcile(ns: string, over: Partial<BuildObservation> = {}) {
        const build = builds[at(ns)] as EngineBuild;
        const decision = admission.decide(build, builds, limit, NOW.getTime());
        const plan = planBuild(observe(build, { admission: decision, ...over }));
        if (plan.createJob) {
          jobs.push(plan.createJob);
          admission.markAdmitted(build);
        }
        if (plan.status.phase === "Succeeded" || plan.status.phase === "Failed") admission.release(build);
        builds[at(ns)] = { ...build, status: plan.status };
        return plan;
      },
    };
  };

  it("starts one Job for two namespaces' builds of a key; the other waits, naming it", () => {
    const c = cluster([inNamespace("b", "2025-01-01T00:00:02Z"), inNamespace("a", "2025-01-01T00:00:01Z")]);
    expect(c.get("a").spec.key).toBe(c.get("b").spec.key);
    // The younger one is reconciled first: the older one is the key's holder even before it runs.
    const waiting = c.reconcile("b");
    c.reconcile("a");
    c.reconcile("b");
    expect(c.jobs.map((j) => j.metadata?.namespace)).toEqual(["a"]);
    expect(waiting.createJob).toBeUndefined();
    expect(c.get("b").status).toMatchObject({ phase: "Queued" });
    expect(c.get("b").status?.queuePosition).toBeUndefined();
    expect(c.get("b").status?.conditions?.[0]?.reason).toBe(WAITING_FOR_SHARED_BUILD);
    expect(c.get("b").status?.message).toContain("EngineBuild a/m");
    // One Normal event on the transition, none while it keeps waiting.
    expect(waiting.event).toMatchObject({ type: "Normal", reason: WAITING_FOR_SHARED_BUILD });
    expect(c.reconcile("b").event).toBeUndefined();
  });

  it("holds the key for a build this operator admitted before the cache shows it Running, even against an older one", () => {
    const c = cluster([
      inNamespace("old", "2025-01-01T00:00:01Z"),
      inNamespace("new", "2025-01-01T00:00:02Z"),
    ]);
    c.admission.markAdmitted(c.get("new"));
    expect(c.admission.decide(c.get("old"), [c.get("old"), c.get("new")], 2, NOW.getTime())).toEqual({
      admitted: false,
      sharedWith: "new/m",
    });
  });

  it("a waiter succeeds from the store without a Job once the shared build publishes", () => {
    const c = cluster([inNamespace("a", "2025-01-01T00:00:01Z"), inNamespace("b", "2025-01-01T00:00:02Z")]);
    const job = c.reconcile("a").createJob as V1Job;
    c.reconcile("b", { manifest: { state: "missing" } });
    const manifest = validManifest(c.get("a").spec.key);
    const done: V1Job = { ...job, status: { conditions: [{ type: "Complete", status: "True" }] } };
    expect(c.reconcile("a", { job: done, manifest }).status).toMatchObject({
      phase: "Succeeded",
      cacheHit: "false",
    });
    const waiter = c.reconcile("b", { manifest });
    expect(waiter.createJob).toBeUndefined();
    expect(waiter.status).toMatchObject({ phase: "Succeeded", cacheHit: "true", attempts: 0 });
    expect(c.jobs).toHaveLength(1);
  });

  it("a waiter takes over with its own Job when the shared build fails permanently", () => {
    const c = cluster([inNamespace("a", "2025-01-01T00:00:01Z"), inNamespace("b", "2025-01-01T00:00:02Z")]);
    c.reconcile("a");
    c.reconcile("b");
    expect(c.reconcile("a", { job: { ...permanentFailure, metadata: { name: "m-1" } } }).status.phase).toBe(
      "Failed",
    );
    const takeover = c.reconcile("b");
    expect(takeover.createJob?.metadata?.namespace).toBe("b");
    expect(takeover.status).toMatchObject({ phase: "Running", attempts: 1 });
    expect(c.jobs.map((j) => j.metadata?.namespace)).toEqual(["a", "b"]);
  });

  it("a build in retry backoff keeps its key: waiters do not start a second build meanwhile", () => {
    const backoff = {
      phase: "Pending" as const,
      attempts: 1,
      jobName: "m-1",
      nextAttemptAt: new Date(NOW.getTime() + 60_000).toISOString(),
    };
    const a = { ...inNamespace("a", "2025-01-01T00:00:01Z"), status: backoff };
    const b = inNamespace("b", "2025-01-01T00:00:02Z");
    expect(new BuildAdmission().decide(b, [a, b], 2, NOW.getTime())).toEqual({
      admitted: false,
      sharedWith: "a/m",
    });
  });

  it("a waiter whose own attempt failed keeps that attempt judged, and still finds the shared engine", () => {
    const b = inNamespace("b", "2025-01-01T00:00:02Z");
    const judged = {
      phase: "Pending" as const,
      attempts: 1,
      jobName: "m-1",
      nextAttemptAt: new Date(NOW.getTime() - 1).toISOString(),
    };
    const failedJob = jobWith("m-1", { type: "Failed", reason: "BackoffLimitExceeded" });
    const waiting = planBuild(
      observe(
        { ...b, status: judged },
        { job: failedJob, admission: { admitted: false, sharedWith: "a/m" } },
      ),
    );
    expect(waiting.status).toMatchObject({
      phase: "Queued",
      attempts: 1,
      nextAttemptAt: judged.nextAttemptAt,
    });
    const queued = { ...b, status: waiting.status };
    expect(needsManifest(queued, failedJob)).toBe(true);
    const after = planBuild(observe(queued, { job: failedJob, manifest: validManifest(b.spec.key) }));
    expect(after.createJob).toBeUndefined();
    expect(after.status.phase).toBe("Succeeded");
  });

  it("does not hold up builds of other keys, and waiters take no build slot", () => {
    const c = cluster(
      [
        inNamespace("a", "2025-01-01T00:00:01Z"),
        inNamespace("b", "2025-01-01T00:00:02Z"),
        inNamespace("c", "2025-01-01T00:00:03Z", { model: { source: "hf://org/other" } }),
        inNamespace("d", "2025-01-01T00:00:04Z", { model: { source: "hf://org/third" } }),
      ],
      2,
    );
    expect(new Set([c.get("a"), c.get("c"), c.get("d")].map((b) => b.spec.key)).size).toBe(3);
    c.reconcile("a");
    expect(c.reconcile("b").status.conditions?.[0]?.reason).toBe(WAITING_FOR_SHARED_BUILD);
    expect(c.reconcile("c").createJob?.metadata?.namespace).toBe("c");
    // Two Jobs run (a and c): the limit holds d, first in line since b waits on a's key.
    expect(c.reconcile("d").status).toMatchObject({ phase: "Queued", queuePosition: 1 });
    expect(c.jobs).toHaveLength(2);
  });
});

describe("waking builds that wait on an engine key", () => {
  const build = (namespace: string, key: string, reason?: string): EngineBuild => {
    const b = engineBuildFor("m");
    const status = reason ? { status: { phase: "Queued" as const, conditions: [condition(reason)] } } : {};
    return { ...b, spec: { ...b.spec, key }, metadata: { ...b.metadata, namespace, name: "m" }, ...status };
  };
  const condition = (reason: string) => ({
    type: "Ready",
    status: "False" as const,
    reason,
    message: "",
    lastTransitionTime: NOW.toISOString(),
  });

  /** reconcileBuild over an in-memory cache and store; returns which builds its wake selected. */
  const woken = async (key: string, builds: EngineBuild[], jobs: V1Job[] = [], stored: string[] = []) => {
    const selected: string[] = [];
    const store = {
      uri: (path: string) => `s3://engines/kiln/${path}`,
      get: async (path: string) => {
        const k = stored.find((s) => path.includes(s));
        return k ? Buffer.from(JSON.stringify(manifestFor(k))) : undefined;
      },
    } as unknown as ObjectStore;
    const ctx: BuildContext = {
      client: {
        get: async () => undefined,
        list: async () => ({ items: [] }),
        replaceStatus: async () => {},
        create: async () => {},
      } as unknown as KubeClient,
      builds: {
        get: (k: string) => builds.find((b) => objectKey(b) === k),
        list: () => builds,
      } as unknown as BuildContext["builds"],
      jobs: {
        get: (k: string) => jobs.find((j) => objectKey(j as KubeObject) === k),
        list: () => jobs,
      } as unknown as BuildContext["jobs"],
      store,
      events: { emit: () => {} },
      config,
      clock: { now: () => NOW.getTime(), setTimeout: () => 0, clearTimeout: () => {} },
      log: silentLog,
      wakeQueued: (which) => {
        for (const b of builds) if (b.status?.phase === "Queued" && which(b)) selected.push(objectKey(b));
      },
    };
    await reconcileBuild(ctx, new BuildAdmission(), key);
    return selected;
  };
  const manifestFor = (key: string) => {
    const check = validManifest(key);
    return check.state === "valid" ? check.manifest : undefined;
  };

  it("wakes its key's waiters and the limit's queue when a build finishes, not other keys' waiters", async () => {
    const holder: EngineBuild = {
      ...build("a", "k1"),
      status: { phase: "Running", attempts: 1, jobName: "m-1" },
    };
    const job: V1Job = {
      metadata: { name: "m-1", namespace: "a" },
      status: { conditions: [{ type: "Complete", status: "True" }] },
    };
    const builds = [
      holder,
      build("b", "k1", WAITING_FOR_SHARED_BUILD),
      build("c", "k2", WAITING_FOR_SHARED_BUILD),
      build("d", "k3", "Queued"),
    ];
    expect(await woken("a/m", builds, [job], ["k1"])).toEqual(["b/m", "d/m"]);
  });

  it("a waiter's own cache hit wakes none of its key's other waiters", async () => {
    const builds = [
      build("a", "k1"),
      build("b", "k1", WAITING_FOR_SHARED_BUILD),
      build("c", "k1", WAITING_FOR_SHARED_BUILD),
    ];
    expect(await woken("b/m", builds, [], ["k1"])).toEqual([]);
  });

  it("a holder that finds its engine already published (a cache hit) still wakes its key's waiters", async () => {
    const builds = [build("a", "k1", "Queued"), build("b", "k1", WAITING_FOR_SHARED_BUILD)];
    expect(await woken("a/m", builds, [], ["k1"])).toContain("b/m");
  });

  it("wakes every key's waiters when a build is gone (its key is no longer known)", async () => {
    const builds = [build("b", "k1", WAITING_FOR_SHARED_BUILD), build("c", "k2", WAITING_FOR_SHARED_BUILD)];
    expect(await woken("a/m", builds)).toEqual(["b/m", "c/m"]);
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
