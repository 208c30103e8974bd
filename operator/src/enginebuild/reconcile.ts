import type { V1Job, V1Pod } from "@kubernetes/client-node";
import type { Logger } from "pino";
import {
  type BenchmarkPoint,
  type BuildProgressReport,
  type EngineBenchmark,
  enginePaths,
  parseProgressReport,
} from "../../../lib/manifest.js";
import type { ObjectStore } from "../../../lib/object-store.js";
import type { EngineBuildStatus } from "../api/enginebuild.js";
import type { EngineBuild } from "../api/types.js";
import type { OperatorConfig } from "../config.js";
import { isSubset } from "../controller/apply.js";
import type { Clock } from "../controller/clock.js";
import type { EventSink, EventType } from "../controller/events.js";
import type { Informer } from "../controller/informer.js";
import { isAlreadyExists, type KubeClient, objectKey, type ResourceType } from "../controller/kube.js";
import type { ReconcileResult } from "../controller/workqueue.js";
import { EB_RESOURCE } from "../inferencemodel/reconcile.js";
import { claimMountsFor } from "./claims.js";
import { attemptOf, desiredJob, jobOutcome, latestJobOf } from "./job.js";
import {
  type BuilderOomKill,
  builderError,
  builderOomKill,
  checkManifest,
  type ManifestCheck,
  oomKillMessage,
  terminationMessage,
  tuningSummary,
} from "./result.js";
import { nextStatus } from "./status.js";

export const JOB: ResourceType = { apiVersion: "batch/v1", kind: "Job", plural: "jobs", namespaced: true };
export const POD: ResourceType = { apiVersion: "v1", kind: "Pod", plural: "pods", namespaced: true };

export type Admission =
  | { admitted: true }
  /** Waiting for a slot under the cluster-wide build limit. */
  | { admitted: false; position: number }
  /** Another EngineBuild (namespace/name) builds the same engine key; its manifest will serve this one. */
  | { admitted: false; sharedWith: string };

export interface BuildObservation {
  build: EngineBuild;
  /** The Job of the latest attempt, if it exists. */
  job: V1Job | undefined;
  /** Object storage's answer, read when it matters (no Job running). */
  manifest: ManifestCheck | undefined;
  terminationMessage: string | undefined;
  /** Set when the finished Job's newest pod ended with its builder OOM-killed. */
  oomKill?: BuilderOomKill | undefined;
  /** The builder's progress.json, read while the Job runs and once more when it failed. */
  progress?: BuildProgressReport | undefined;
  admission: Admission;
  config: OperatorConfig;
  now: Date;
}

export interface BuildPlan {
  createJob: V1Job | undefined;
  status: EngineBuildStatus;
  event: { type: EventType; reason: string; message: string } | undefined;
  requeueAfterMs: number | undefined;
}

/**
 * Does this build need to read object storage before planning? Whenever it might start a Job too:
 * after a judged failed attempt, another namespace's build of the same key may have published.
 */
export function needsManifest(build: EngineBuild, job: V1Job | undefined): boolean {
  const phase = build.status?.phase;
  if (phase === "Succeeded" || phase === "Failed") return false;
  if (!job) return true;
  const state = jobOutcome(job).state;
  return state === "complete" || (state === "failed" && !!build.status?.nextAttemptAt);
}

/**
 * Does this build's progress.json need reading? While its Job runs, and once when the Job failed
 * and the attempt is not yet judged: a failed build's last report says where it stopped, and a
 * build faster than the refresh would otherwise never show one.
 */
export function needsProgress(build: EngineBuild, job: V1Job | undefined): boolean {
  if (!job) return false;
  const state = jobOutcome(job).state;
  if (state === "running") return true;
  const phase = build.status?.phase;
  return state === "failed" && phase !== "Failed" && phase !== "Succeeded" && !build.status?.nextAttemptAt;
}

/**
 * The report if this attempt wrote it. progress.json outlives attempts, so a report older than the
 * Job is the previous attempt's and would show a new one further along than it is.
 */
function progressOfAttempt(
  report: BuildProgressReport | undefined,
  job: V1Job,
): BuildProgressReport | undefined {
  const started = job.status?.startTime ? new Date(job.status.startTime).getTime() : undefined;
  if (!report || (started !== undefined && Date.parse(report.updatedAt) < started)) return undefined;
  return report;
}

/**
 * How often a running build's progress is re-read. A requeue, not a watch: object storage has no
 * watch, and a build's percent a few seconds late costs nothing.
 */
export const PROGRESS_REFRESH_MS = 10_000;

/** Three significant figures are what a reader of `kubectl get eb -o yaml` can use. */
function roundedBenchmark(b: EngineBenchmark): EngineBenchmark {
  const r = (x: number) => Number(x.toPrecision(3));
  const point = (p: BenchmarkPoint): BenchmarkPoint => ({
    batchSize: p.batchSize,
    ttftMs: r(p.ttftMs),
    tpotMs: r(p.tpotMs),
    tokensPerSecond: r(p.tokensPerSecond),
  });
  return { ...b, batch1: point(b.batch1), maxBatch: point(b.maxBatch) };
}

export function retryDelayMs(config: OperatorConfig, attempts: number): number {
  return config.limits.buildRetryBaseSeconds * 1000 * 2 ** Math.max(0, attempts - 1);
}

/**
 * The EngineBuild reconcile as a pure function:
 * terminal phases stay put; a valid manifest in storage means done (with or without a Job);
 * a finished Job is judged by the manifest it left; a failed attempt is retried with backoff up to
 * the configured attempts; otherwise a new Job is created once admitted by the build limit.
 */
export function planBuild(o: BuildObservation): BuildPlan {
  const { job, config, now } = o;
  // A Job of a later attempt than status records: the operator stopped between creating it and
  // writing status. Adopt it as the current attempt instead of starting another one.
  const adopt = job && attemptOf(job) > (o.build.status?.attempts ?? 0);
  // Whatever backoff status recorded belonged to the attempt before the adopted one.
  const { nextAttemptAt: _n, queuePosition: _q, ...recorded } = o.build.status ?? {};
  const build: EngineBuild = adopt
    ? {
        ...o.build,
        status: {
          ...recorded,
          phase: "Running",
          attempts: attemptOf(job),
          jobName: job.metadata?.name ?? "",
          startedAt: o.build.status?.startedAt ?? now.toISOString(),
        },
      }
    : o.build;
  const status = build.status ?? {};
  const attempts = status.attempts ?? 0;
  const plan: BuildPlan = {
    createJob: undefined,
    status: adopt
      ? nextStatus(build, "Running", "JobAdopted", `adopted build Job ${status.jobName}`, {}, now)
      : status,
    event: undefined,
    requeueAfterMs: undefined,
  };
  const set = (
    phase: Parameters<typeof nextStatus>[1],
    reason: string,
    message: string,
    patch: Partial<EngineBuildStatus> = {},
    event?: EventType,
  ) => {
    plan.status = nextStatus(build, phase, reason, message, patch, now);
    if (event && (status.phase !== phase || build.status?.conditions?.[0]?.reason !== reason)) {
      plan.event = { type: event, reason, message };
    }
  };

  if (status.phase === "Succeeded" || status.phase === "Failed") return plan;

  const succeed = (check: Extract<ManifestCheck, { state: "valid" }>, cacheHit: boolean) => {
    const tuning = tuningSummary(check, o.terminationMessage);
    set(
      "Succeeded",
      cacheHit ? "CacheHit" : "Built",
      cacheHit ? "engine already in object storage" : `engine built in attempt ${attempts}`,
      {
        cacheHit: cacheHit ? "true" : "false",
        attempts,
        completedAt: status.completedAt ?? now.toISOString(),
        artifact: {
          uri: check.engineUri,
          sha256: check.manifest.sha256,
          sizeBytes: check.manifest.sizeBytes,
        },
        ...(tuning ? { tuning } : {}),
        ...(check.manifest.benchmark ? { benchmark: roundedBenchmark(check.manifest.benchmark) } : {}),
      },
      "Normal",
    );
  };

  const attemptFailed = (
    reason: string,
    message: string,
    permanent = false,
    progress: BuildProgressReport | undefined = undefined,
  ) => {
    const stoppedAt = progress ? { progress } : {};
    if (permanent || attempts >= config.limits.buildAttempts) {
      set(
        "Failed",
        permanent ? "PermanentBuildError" : reason,
        permanent
          ? `attempt ${attempts}: the builder reported an error no retry can fix: ${message}`
          : `attempt ${attempts}/${config.limits.buildAttempts}: ${message}`,
        { completedAt: now.toISOString(), ...stoppedAt },
        "Warning",
      );
      return;
    }
    const delay = retryDelayMs(config, attempts);
    set(
      "Pending",
      "RetryBackoff",
      `attempt ${attempts} failed (${reason}: ${message}); retrying`,
      {
        nextAttemptAt: new Date(now.getTime() + delay).toISOString(),
        ...stoppedAt,
      },
      "Warning",
    );
    plan.requeueAfterMs = delay;
  };

  if (job && status.jobName === job.metadata?.name) {
    const outcome = jobOutcome(job);
    const progress = progressOfAttempt(o.progress, job);
    if (outcome.state === "running") {
      set("Running", "JobRunning", `build Job ${job.metadata?.name} running (attempt ${attempts})`, {
        ...(job.status?.startTime ? { startedAt: new Date(job.status.startTime).toISOString() } : {}),
        ...(progress ? { progress } : {}),
      });
      plan.requeueAfterMs = PROGRESS_REFRESH_MS;
      return plan;
    }
    if (status.nextAttemptAt) {
      // This finished attempt was already judged; wait out the backoff, then start the next one.
      const wait = Date.parse(status.nextAttemptAt) - now.getTime();
      if (wait > 0) {
        plan.requeueAfterMs = wait;
        return plan;
      }
    } else if (outcome.state === "failed") {
      // An OOM kill first: its termination message is only the log tail, and the Job's condition
      // only says the backoff limit was reached.
      attemptFailed(
        outcome.reason,
        (o.oomKill && oomKillMessage(o.oomKill)) ?? builderError(o.terminationMessage) ?? outcome.message,
        outcome.permanent,
        progress,
      );
      return plan;
    } else {
      const check = o.manifest;
      if (check?.state === "valid") succeed(check, false);
      else if (check?.state === "invalid") attemptFailed("ManifestInvalid", check.errors.join("; "));
      else attemptFailed("ManifestMissing", "the Job completed but wrote no manifest.json");
      return plan;
    }
  } else if (status.jobName && status.phase === "Running") {
    attemptFailed("JobDeleted", `build Job ${status.jobName} disappeared before finishing`);
    return plan;
  }

  if (o.manifest?.state === "valid") {
    succeed(o.manifest, attempts === 0);
    return plan;
  }
  if (status.nextAttemptAt && Date.parse(status.nextAttemptAt) > now.getTime()) {
    plan.requeueAfterMs = Date.parse(status.nextAttemptAt) - now.getTime();
    return plan;
  }
  if (!o.admission.admitted) {
    // A failed attempt already judged keeps its record: without it the next reconcile would judge
    // the same failed Job again and start another backoff.
    const judged = status.nextAttemptAt ? { nextAttemptAt: status.nextAttemptAt } : {};
    if ("sharedWith" in o.admission) {
      set(
        "Queued",
        WAITING_FOR_SHARED_BUILD,
        `waiting for EngineBuild ${o.admission.sharedWith}, which builds the same engine (key ${build.spec.key}); this build uses its result from object storage, or takes over if it fails`,
        judged,
        "Normal",
      );
      return plan;
    }
    const position = o.admission.position;
    set(
      "Queued",
      "Queued",
      `waiting for a build slot (position ${position}, limit ${config.limits.maxConcurrentBuilds})`,
      { queuePosition: position, ...judged },
    );
    return plan;
  }
  const claims = claimMountsFor(build.spec);
  if (!claims.ok) {
    // The API server would refuse the Job (or its pod could never mount the claim): no attempt can run.
    set("Failed", "InvalidSource", claims.errors.join("; "), { completedAt: now.toISOString() }, "Warning");
    return plan;
  }
  const attempt = attempts + 1;
  plan.createJob = desiredJob(build, attempt, config, claims.mounts);
  set(
    "Running",
    "JobCreated",
    `build Job ${plan.createJob.metadata?.name} created (attempt ${attempt})`,
    { attempts: attempt, jobName: plan.createJob.metadata?.name ?? "", startedAt: now.toISOString() },
    "Normal",
  );
  // The previous attempt's last report would show the new one further along than it is.
  const { progress: _previous, ...fresh } = plan.status;
  plan.status = fresh;
  return plan;
}

export interface BuildContext {
  client: KubeClient;
  builds: Informer<EngineBuild>;
  jobs: Informer<V1Job>;
  store: ObjectStore;
  events: EventSink;
  config: OperatorConfig;
  clock: Clock;
  log: Logger;
  /** Re-enqueue the Queued builds `which` selects (a slot or an engine key just freed). */
  wakeQueued: (which: (build: EngineBuild) => boolean) => void;
}

/** The condition reason of a build Queued behind another namespace's build of the same key. */
export const WAITING_FOR_SHARED_BUILD = "WaitingForSharedBuild";

const isQueuedFor = (b: EngineBuild, reason: string) =>
  b.status?.phase === "Queued" && b.status.conditions?.[0]?.reason === reason;

/** Oldest first, then namespace/name: every operator replica and restart orders builds alike. */
const byAge = (a: EngineBuild, b: EngineBuild) =>
  String(a.metadata.creationTimestamp ?? "").localeCompare(String(b.metadata.creationTimestamp ?? "")) ||
  objectKey(a).localeCompare(objectKey(b));

/**
 * Decides who may start a Job: one build per engine key cluster-wide, and at most the limit at
 * once. Admission runs under one lock, and builds admitted here count as running until the cache
 * shows them so: without that, two workers reading the same stale cache could both take the last
 * slot, or both build one key.
 */
export class BuildAdmission {
  private readonly admitted = new Set<string>();
  private lock: Promise<void> = Promise.resolve();

  async withLock<T>(fn: () => Promise<T>): Promise<T> {
    const previous = this.lock;
    let release: () => void = () => {};
    this.lock = new Promise((r) => {
      release = r;
    });
    await previous;
    try {
      return await fn();
    } finally {
      release();
    }
  }

  decide(build: EngineBuild, all: readonly EngineBuild[], limit: number, now: number): Admission {
    const key = objectKey(build);
    for (const k of this.admitted) {
      const cached = all.find((b) => objectKey(b) === k);
      // Once the cache shows the build past Pending/Queued, its phase speaks for it.
      if (!cached || ["Running", "Succeeded", "Failed"].includes(cached.status?.phase ?? ""))
        this.admitted.delete(k);
    }
    const running = new Set([
      ...all.filter((b) => b.status?.phase === "Running").map(objectKey),
      ...this.admitted,
    ]);
    if (running.has(key)) return { admitted: true };
    // Each key's holder: its running build, else the oldest that will start one. A build in
    // backoff keeps its key (it retries its own attempts); a finished or deleted one frees it.
    const holders = new Map<string, EngineBuild>();
    for (const b of [...all].sort(byAge)) {
      const phase = b.status?.phase;
      if (phase === "Succeeded" || phase === "Failed" || b.metadata.deletionTimestamp) continue;
      const held = holders.get(b.spec.key);
      if (!held || (running.has(objectKey(b)) && !running.has(objectKey(held)))) holders.set(b.spec.key, b);
    }
    const holder = holders.get(build.spec.key);
    if (holder && objectKey(holder) !== key) return { admitted: false, sharedWith: objectKey(holder) };
    // Only holders take slots: a build waiting on another's key never starts a Job of its own.
    const waiting = [...holders.values()]
      .filter((b) => {
        const next = b.status?.nextAttemptAt;
        return !running.has(objectKey(b)) && !(next && Date.parse(next) > now);
      })
      .sort(byAge);
    const position = waiting.findIndex((b) => objectKey(b) === key) + 1 || waiting.length + 1;
    if (running.size + position <= limit) return { admitted: true };
    return { admitted: false, position: Math.max(1, running.size + position - limit) };
  }

  markAdmitted(build: EngineBuild): void {
    this.admitted.add(objectKey(build));
  }

  release(build: EngineBuild): void {
    this.admitted.delete(objectKey(build));
  }
}

export async function reconcileBuild(
  ctx: BuildContext,
  admission: BuildAdmission,
  key: string,
): Promise<ReconcileResult | undefined> {
  const build = ctx.builds.get(key);
  if (!build || build.metadata.deletionTimestamp) {
    // It may have held an engine key (its key is not known any more): let the waiters look again.
    ctx.wakeQueued((b) => isQueuedFor(b, WAITING_FOR_SHARED_BUILD));
    return undefined;
  }
  const namespace = build.metadata.namespace ?? "";
  const log = ctx.log.child({ engineBuild: key });

  const name = build.status?.jobName;
  // The cache may not have a Job we created moments ago; ask the API server before concluding
  // it is gone (that would count a phantom failed attempt).
  const recorded = name
    ? (ctx.jobs.get(`${namespace}/${name}`) ?? (await ctx.client.get<V1Job>(JOB, namespace, name)))
    : undefined;
  // A Job status does not know of yet (created just before an operator restart) is the current one.
  const latest = latestJobOf(
    build,
    ctx.jobs.list().filter((j) => j.metadata?.namespace === namespace),
  );
  const job = attemptOf(latest) > attemptOf(recorded) ? latest : recorded;

  let manifest: ManifestCheck | undefined;
  let message: string | undefined;
  let oomKill: BuilderOomKill | undefined;
  if (needsManifest(build, job)) {
    const paths = enginePaths(build.spec.key);
    let body: Buffer | undefined;
    try {
      body = await ctx.store.get(paths.manifest);
    } catch (err) {
      await reportStoreUnavailable(ctx, build, ctx.store.uri(paths.manifest), err as Error);
      // Thrown on: the work queue retries this key with exponential backoff until the store answers.
      throw err;
    }
    manifest = checkManifest(body, build.spec.key, ctx.store.uri(paths.engine));
  }
  let progress: BuildProgressReport | undefined;
  if (needsProgress(build, job)) {
    const path = enginePaths(build.spec.key).progress;
    // Advisory: a store that does not answer leaves the last progress in status, nothing else.
    const body = await ctx.store.get(path).catch((err: Error) => {
      log.debug({ err, path }, "progress not readable");
      return undefined;
    });
    progress = parseProgressReport(body?.toString("utf8"));
  }
  // A finished pod's termination message: the tuning summary on success, the builder's error on
  // failure; and whether the builder was OOM-killed, which the message alone does not say.
  if (job && jobOutcome(job).state !== "running") {
    const pods = await ctx.client.list<V1Pod>(POD, namespace, `job-name=${job.metadata?.name}`);
    message = terminationMessage(pods.items);
    oomKill = builderOomKill(pods.items);
  }

  const plan = await admission.withLock(async () => {
    const decision = admission.decide(
      build,
      ctx.builds.list(),
      ctx.config.limits.maxConcurrentBuilds,
      ctx.clock.now(),
    );
    const p = planBuild({
      build,
      job,
      manifest,
      terminationMessage: message,
      oomKill,
      progress,
      admission: decision,
      config: ctx.config,
      now: new Date(ctx.clock.now()),
    });
    if (p.createJob) {
      try {
        await ctx.client.create(JOB, p.createJob);
      } catch (err) {
        // A previous run of this reconcile (e.g. before an operator restart) created it already.
        if (!isAlreadyExists(err)) throw err;
      }
      admission.markAdmitted(build);
    }
    return p;
  });

  if (!isSubset(plan.status, build.status ?? {}) || !isSubset(build.status ?? {}, plan.status)) {
    await ctx.client.replaceStatus(EB_RESOURCE, { ...build, status: plan.status });
  }
  if (plan.event) ctx.events.emit(build, plan.event.type, plan.event.reason, plan.event.message);
  const phase = plan.status.phase;
  if (
    phase === "Succeeded" ||
    phase === "Failed" ||
    (phase === "Pending" && build.status?.phase === "Running")
  ) {
    admission.release(build);
    // A slot may have freed, and the builds waiting on this key find its manifest or one takes
    // over. A finished build is reconciled again once the cache shows it, which wakes them after a
    // stale read. A cache hit frees the key only if it held it (it was not waiting on another),
    // and only once: waking the key's waiters on every hit would cost a store read per waiter per hit.
    const freesKey =
      plan.status.cacheHit !== "true" ||
      (build.status?.phase !== "Succeeded" && !isQueuedFor(build, WAITING_FOR_SHARED_BUILD));
    ctx.wakeQueued(
      (b) =>
        isQueuedFor(b, "Queued") ||
        (freesKey && b.spec.key === build.spec.key && isQueuedFor(b, WAITING_FOR_SHARED_BUILD)),
    );
  }
  log.debug({ phase, attempts: plan.status.attempts }, "reconciled");
  return plan.requeueAfterMs !== undefined ? { requeueAfterMs: plan.requeueAfterMs } : undefined;
}

/**
 * Says on the EngineBuild (condition reason ObjectStoreUnavailable, a Warning Event) that the
 * object store could not be read, keeping its phase: nothing about the build itself is known. The
 * next successful reconcile replaces the condition.
 */
async function reportStoreUnavailable(
  ctx: BuildContext,
  build: EngineBuild,
  uri: string,
  err: Error,
): Promise<void> {
  const reason = "ObjectStoreUnavailable";
  const message = `cannot read ${uri} (endpoint ${ctx.config.objectStore.endpoint ?? "default"}): ${err.message}; retrying with backoff`;
  if (build.status?.conditions?.some((c) => c.reason === reason)) return;
  const status = nextStatus(
    build,
    build.status?.phase ?? "Pending",
    reason,
    message,
    {},
    new Date(ctx.clock.now()),
  );
  await ctx.client.replaceStatus(EB_RESOURCE, { ...build, status });
  ctx.events.emit(build, "Warning", reason, message);
}
