import type { Logger } from "pino";
import { type CacheTransform, trimMetadata } from "./cache-trim.js";
import { type Clock, realClock } from "./clock.js";
import { isGone, type KubeObject, type ListWatch, objectKey, type WatchEvent } from "./kube.js";

export interface InformerHandlers<T> {
  add?(obj: T): void;
  update?(oldObj: T, newObj: T): void;
  delete?(obj: T): void;
}

export interface InformerOptions<T> {
  clock?: Clock;
  /** Replay every cached object as an update this often, so a missed edge is eventually retried. */
  resyncMs?: number;
  /** Wait before re-listing after a failed list or watch; doubles up to 30s. */
  retryMs?: number;
  /** What of each object the cache keeps (cache-trim.ts); by default all but managedFields. */
  transform?: CacheTransform<T>;
  log: Logger;
}

type IndexFn<T> = (obj: T) => string[];

/**
 * List + watch cache for one kind. The watch resumes from the last resourceVersion it saw
 * (bookmarks included); when the API server answers 410 Gone (that version was compacted away) it
 * re-lists and emits the difference, including deletes that happened while it was not watching.
 */
export class Informer<T extends KubeObject> {
  private readonly cache = new Map<string, T>();
  private readonly handlers: InformerHandlers<T>[] = [];
  private readonly indexes = new Map<string, IndexFn<T>>();
  private readonly clock: Clock;
  private readonly log: Logger;
  private readonly transform: CacheTransform<T>;
  private resourceVersion = "";
  private stopWatch: (() => void) | undefined;
  private resyncTimer: unknown;
  private retryTimer: unknown;
  private stopped = false;
  private failures = 0;
  private synced: Promise<void> | undefined;
  /** Watch generation: events and closes from a superseded watch are ignored. */
  private generation = 0;

  constructor(
    private readonly lw: ListWatch<T>,
    private readonly opts: InformerOptions<T>,
  ) {
    this.clock = opts.clock ?? realClock;
    this.log = opts.log;
    this.transform = opts.transform ?? trimMetadata;
  }

  on(handlers: InformerHandlers<T>): void {
    this.handlers.push(handlers);
  }

  addIndex(name: string, fn: IndexFn<T>): void {
    this.indexes.set(name, fn);
  }

  byIndex(name: string, value: string): T[] {
    const fn = this.indexes.get(name);
    if (!fn) throw new Error(`informer has no index ${name}`);
    return [...this.cache.values()].filter((obj) => fn(obj).includes(value));
  }

  get(key: string): T | undefined {
    return this.cache.get(key);
  }

  list(): T[] {
    return [...this.cache.values()];
  }

  /** Resolves once the first list has been loaded into the cache. */
  start(): Promise<void> {
    this.synced ??= this.relist().then(() => this.scheduleResync());
    return this.synced;
  }

  stop(): void {
    this.stopped = true;
    this.generation++;
    this.stopWatch?.();
    this.clock.clearTimeout(this.resyncTimer);
    this.clock.clearTimeout(this.retryTimer);
  }

  private async relist(): Promise<void> {
    for (;;) {
      if (this.stopped) return;
      try {
        const { items, resourceVersion } = await this.lw.list();
        this.replace(items);
        this.resourceVersion = resourceVersion;
        this.failures = 0;
        await this.watch();
        return;
      } catch (err) {
        const delay = this.retryDelay();
        this.log.warn({ err, retryInMs: delay }, "list failed");
        await new Promise<void>((resolve) => {
          this.retryTimer = this.clock.setTimeout(resolve, delay);
        });
      }
    }
  }

  private retryDelay(): number {
    this.failures++;
    return Math.min((this.opts.retryMs ?? 1000) * 2 ** (this.failures - 1), 30_000);
  }

  private replace(items: T[]): void {
    const seen = new Set<string>();
    for (const obj of items) {
      const key = objectKey(obj);
      seen.add(key);
      this.upsert(key, obj);
    }
    for (const [key, old] of this.cache) {
      if (!seen.has(key)) {
        this.cache.delete(key);
        for (const h of this.handlers) h.delete?.(old);
      }
    }
  }

  private upsert(key: string, received: T): void {
    const old = this.cache.get(key);
    const obj = this.transform(received);
    this.cache.set(key, obj);
    for (const h of this.handlers) {
      if (old) h.update?.(old, obj);
      else h.add?.(obj);
    }
  }

  private async watch(): Promise<void> {
    const generation = ++this.generation;
    const current = () => generation === this.generation && !this.stopped;
    this.stopWatch = await this.lw.watch(
      this.resourceVersion,
      (event) => {
        if (current()) this.handle(event, generation);
      },
      (err) => {
        if (!current()) return;
        this.generation++;
        if (err === undefined) {
          // The server ends watches after timeoutSeconds: resume from where we were.
          void this.watch().catch((e: unknown) => this.restart(e));
        } else {
          this.restart(err);
        }
      },
    );
  }

  private handle(event: WatchEvent<T>, generation: number): void {
    if (event.type === "ERROR") {
      const status = event.object as { code?: number; message?: string };
      this.stopWatch?.();
      if (generation === this.generation) this.generation++;
      this.restart(
        status.code === 410 ? Object.assign(new Error(status.message), { statusCode: 410 }) : status,
      );
      return;
    }
    const rv = event.object.metadata?.resourceVersion;
    if (rv) this.resourceVersion = rv;
    if (event.type === "BOOKMARK") return;
    const key = objectKey(event.object);
    if (event.type === "DELETED") {
      const old = this.cache.get(key) ?? event.object;
      this.cache.delete(key);
      for (const h of this.handlers) h.delete?.(old);
      return;
    }
    this.upsert(key, event.object);
  }

  private restart(err: unknown): void {
    if (this.stopped) return;
    if (isGone(err)) {
      // Our resourceVersion is too old to resume from: only a fresh list is consistent again.
      this.log.info("watch expired (410 Gone), re-listing");
      void this.relist();
      return;
    }
    const delay = this.retryDelay();
    this.log.warn({ err, retryInMs: delay }, "watch failed, re-listing");
    this.retryTimer = this.clock.setTimeout(() => void this.relist(), delay);
  }

  private scheduleResync(): void {
    const every = this.opts.resyncMs;
    if (!every || this.stopped) return;
    this.resyncTimer = this.clock.setTimeout(() => {
      for (const obj of this.cache.values()) for (const h of this.handlers) h.update?.(obj, obj);
      this.scheduleResync();
    }, every);
  }
}
