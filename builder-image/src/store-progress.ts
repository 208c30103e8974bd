import { type BuildProgressReport, enginePaths } from "../../lib/manifest.js";
import type { ObjectStore } from "../../lib/object-store.js";
import type { ProgressEvent, ProgressSink } from "./progress.js";

export interface StoreProgress {
  sink: ProgressSink;
  /** Waits for the last event to be written (a failed write is reported, never thrown). */
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

  const sink = (event: ProgressEvent) => {
    const t = now();
    if (event.phase === lastPhase && t - lastWrite < minIntervalMs) return;
    lastPhase = event.phase;
    lastWrite = t;
    queued = {
      phase: event.phase,
      percent: Math.max(0, Math.min(100, Math.floor(event.percent))),
      message: event.message,
      updatedAt: new Date(t).toISOString(),
    };
    if (!writing) inFlight = drain();
  };
  return { sink, flush: () => inFlight };
}
