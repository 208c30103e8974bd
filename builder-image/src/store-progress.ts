import { type BuildProgressReport, enginePaths } from "../../lib/manifest.js";
import type { ObjectStore } from "../../lib/object-store.js";
import type { ProgressEvent, ProgressSink } from "./progress.js";

export interface StoreProgress {
  sink: ProgressSink;
  /** Writes the last event if the interval held it back, and waits for it (errors are reported, never thrown). */
  flush(): Promise<void>;
}

/**
 * Mirrors progress to `builds/<key>/progress.json` for the operator to show in EngineBuild status.
 * One write at a time, only the newest event kept while one is in flight; a write happens on a
 * phase change or once `minIntervalMs` has passed, so a byte-level progress stream costs a few
 * requests a minute. Progress is advisory: a failed write never fails the build.
 */
export function storeProgress(
  store: ObjectStore,
  key: string,
  opts: { minIntervalMs?: number; onError?: (err: Error) => void; now?: () => number } = {},
): StoreProgress {
  const minIntervalMs = opts.minIntervalMs ?? 3000;
  const now = opts.now ?? Date.now;
  const path = enginePaths(key).progress;
  let lastPhase: string | undefined;
  let lastWrite = Number.NEGATIVE_INFINITY;
  let queued: BuildProgressReport | undefined;
  /** The newest event the interval kept from being written. */
  let heldBack: BuildProgressReport | undefined;
  let inFlight: Promise<void> = Promise.resolve();
  let writing = false;

  const drain = async () => {
    writing = true;
    while (queued) {
      const report = queued;
      queued = undefined;
      await store.put(path, JSON.stringify(report)).catch((err: Error) => opts.onError?.(err));
    }
    writing = false;
  };

  const send = (report: BuildProgressReport) => {
    queued = report;
    if (!writing) inFlight = drain();
  };

  const sink = (event: ProgressEvent) => {
    const t = now();
    const report = {
      phase: event.phase,
      percent: Math.max(0, Math.min(100, Math.floor(event.percent))),
      message: event.message,
      updatedAt: new Date(t).toISOString(),
    };
    if (event.phase === lastPhase && t - lastWrite < minIntervalMs) {
      heldBack = report;
      return;
    }
    heldBack = undefined;
    lastPhase = event.phase;
    lastWrite = t;
    send(report);
  };

  const flush = async () => {
    // The build is ending (done or failed): its last event must land even inside the interval,
    // since it is what the operator shows of a failed build.
    if (heldBack) send(heldBack);
    heldBack = undefined;
    await inFlight;
  };
  return { sink, flush };
}
