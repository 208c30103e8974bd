import type { Logger } from "pino";
import { type Clock, realClock } from "./clock.js";
import { isConflict, isNamespaceTerminating } from "./kube.js";

export interface WorkQueueOptions {
  clock?: Clock;
  /** First retry delay after a failure; doubles per consecutive failure of the same key. */
  baseDelayMs?: number;
  maxDelayMs?: number;
}

/**
 * A keyed work queue with client-go semantics:
 * - a key is queued at most once (adding it again while queued is a no-op);
 * - a key being processed is never handed to a second worker: adding it meanwhile marks it dirty
 *   and it is queued again when the first worker calls `done` (per-key serialization);
 * - `addRateLimited` requeues with exponential backoff per key, `forget` resets it.
 */
export class WorkQueue {
  private readonly queue: string[] = [];
  private readonly dirty = new Set<string>();
  private readonly processing = new Set<string>();
  private readonly failures = new Map<string, number>();
  private readonly waiting = new Map<string, { at: number; timer: unknown }>();
  private readonly getters: ((key: string | undefined) => void)[] = [];
  private shuttingDown = false;
  private readonly clock: Clock;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;

  constructor(opts: WorkQueueOptions = {}) {
    this.clock = opts.clock ?? realClock;
    this.baseDelayMs = opts.baseDelayMs ?? 500;
    this.maxDelayMs = opts.maxDelayMs ?? 300_000;
  }

  add(key: string): void {
    if (this.shuttingDown || this.dirty.has(key)) return;
    this.dirty.add(key);
    if (this.processing.has(key)) return;
    const getter = this.getters.shift();
    if (getter) {
      this.dirty.delete(key);
      this.processing.add(key);
      getter(key);
    } else {
      this.queue.push(key);
    }
  }

  /** Add the key after `ms`; of several pending delays for one key the earliest wins. */
  addAfter(key: string, ms: number): void {
    if (this.shuttingDown) return;
    if (ms <= 0) {
      this.add(key);
      return;
    }
    const at = this.clock.now() + ms;
    const pending = this.waiting.get(key);
    if (pending && pending.at <= at) return;
    if (pending) this.clock.clearTimeout(pending.timer);
    const timer = this.clock.setTimeout(() => {
      this.waiting.delete(key);
      this.add(key);
    }, ms);
    this.waiting.set(key, { at, timer });
  }

  /** Requeue after a failure; returns the delay chosen. */
  addRateLimited(key: string): number {
    const failures = (this.failures.get(key) ?? 0) + 1;
    this.failures.set(key, failures);
    const delay = this.backoff(failures);
    this.addAfter(key, delay);
    return delay;
  }

  backoff(failures: number): number {
    // 2^(n-1) overflows to Infinity for large n, which min() caps.
    return Math.min(this.baseDelayMs * 2 ** (failures - 1), this.maxDelayMs);
  }

  forget(key: string): void {
    this.failures.delete(key);
  }

  numRequeues(key: string): number {
    return this.failures.get(key) ?? 0;
  }

  /** The next key to process, or undefined once the queue is shut down. */
  get(): Promise<string | undefined> {
    const key = this.queue.shift();
    if (key !== undefined) {
      this.dirty.delete(key);
      this.processing.add(key);
      return Promise.resolve(key);
    }
    if (this.shuttingDown) return Promise.resolve(undefined);
    return new Promise((resolve) => this.getters.push(resolve));
  }

  done(key: string): void {
    this.processing.delete(key);
    if (this.dirty.has(key)) {
      this.dirty.delete(key);
      this.add(key);
    }
  }

  len(): number {
    return this.queue.length;
  }

  /** Stop handing out keys; workers blocked in `get` receive undefined. */
  shutDown(): void {
    this.shuttingDown = true;
    for (const { timer } of this.waiting.values()) this.clock.clearTimeout(timer);
    this.waiting.clear();
    for (const getter of this.getters.splice(0)) getter(undefined);
  }
}

/** What a reconcile asks of the queue when it succeeds. */
export interface ReconcileResult {
  /** Check again after this long even without a watch event (e.g. a build retry backoff). */
  requeueAfterMs?: number;
}

export type Reconciler = (key: string) => Promise<ReconcileResult | undefined>;

/**
 * Run `concurrency` workers over the queue until it is shut down. A failing key is retried with
 * backoff; a succeeding one has its backoff forgotten. Resolves when every worker has finished
 * its current key (graceful shutdown).
 */
export async function runWorkers(
  queue: WorkQueue,
  concurrency: number,
  reconcile: Reconciler,
  log: Logger,
  observe?: (key: string, outcome: "success" | "error", seconds: number) => void,
): Promise<void> {
  const worker = async () => {
    for (;;) {
      const key = await queue.get();
      if (key === undefined) return;
      const started = performance.now();
      try {
        const result = await reconcile(key);
        queue.forget(key);
        if (result?.requeueAfterMs !== undefined) queue.addAfter(key, result.requeueAfterMs);
        observe?.(key, "success", (performance.now() - started) / 1000);
      } catch (err) {
        if (isNamespaceTerminating(err)) {
          // The namespace's deletion removes the object too; retrying would only fail again.
          queue.forget(key);
          log.debug({ key }, "namespace is being deleted; dropping the key");
        } else if (isConflict(err)) {
          // The cache had not caught up with a write yet: routine, retried from fresher state.
          const delay = queue.addRateLimited(key);
          log.debug({ key, retryInMs: delay, err: (err as Error).message }, "conflict; retrying");
        } else {
          const delay = queue.addRateLimited(key);
          log.error({ err, key, retryInMs: delay }, "reconcile failed");
        }
        observe?.(key, "error", (performance.now() - started) / 1000);
      } finally {
        queue.done(key);
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
}
