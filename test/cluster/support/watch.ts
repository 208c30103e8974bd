import { type KubeConfig, Watch } from "@kubernetes/client-node";

export type WatchSelector = { name: string } | { labelSelector: string };

/**
 * Watches a collection (narrowed to one object by name, or to a label selector) until `done` holds
 * for an object in it, and resolves to that object. The watch starts without a resourceVersion, so
 * the server first replays the current state: a condition reached before the watch began is seen.
 */
export async function watchUntil<T extends { metadata?: { name?: string } }>(
  kc: KubeConfig,
  collectionPath: string,
  selector: WatchSelector,
  done: (obj: T) => boolean,
  options: { timeoutMs: number; describe: string },
): Promise<T> {
  const query =
    "name" in selector
      ? { fieldSelector: `metadata.name=${selector.name}` }
      : { labelSelector: selector.labelSelector };
  let last: T | undefined;
  let controller: AbortController | undefined;
  let timer: NodeJS.Timeout | undefined;
  try {
    return await new Promise<T>((resolve, reject) => {
      timer = setTimeout(() => {
        const status = JSON.stringify((last as { status?: unknown } | undefined)?.status);
        reject(
          new Error(
            `${options.describe}: not reached within ${options.timeoutMs} ms; last status seen ${status}`,
          ),
        );
      }, options.timeoutMs);
      new Watch(kc)
        .watch(
          collectionPath,
          query,
          (phase, obj: T) => {
            if (phase === "DELETED") return;
            last = obj;
            if (done(obj)) resolve(obj);
          },
          (err) =>
            reject(
              new Error(
                `${options.describe}: watch on ${collectionPath} ended: ${err ?? "closed by server"}`,
              ),
            ),
        )
        .then((c) => {
          controller = c;
        }, reject);
    });
  } finally {
    clearTimeout(timer);
    controller?.abort();
  }
}
