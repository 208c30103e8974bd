import { request as httpRequest } from "node:http";
import { request as httpsRequest } from "node:https";

/**
 * Polls `probe` until it returns true, failing with `what` after timeoutMs or as soon as `abort`
 * settles (a component that exited will never become healthy, so there is no point waiting on).
 */
export async function waitUntil(
  what: string,
  probe: () => Promise<boolean>,
  options: { timeoutMs: number; abort?: Promise<string>; intervalMs?: number },
): Promise<void> {
  const deadline = Date.now() + options.timeoutMs;
  let aborted: string | undefined;
  options.abort?.then((reason) => {
    aborted = reason;
  });
  let lastError = "";
  while (Date.now() < deadline) {
    if (aborted !== undefined) throw new Error(`${what}: ${aborted}`);
    try {
      if (await probe()) return;
    } catch (err) {
      lastError = ` (last error: ${(err as Error).message})`;
    }
    await new Promise((resolve) => setTimeout(resolve, options.intervalMs ?? 100));
  }
  throw new Error(`${what}: not done within ${options.timeoutMs} ms${lastError}`);
}

export interface TlsClient {
  ca: Buffer;
  cert?: Buffer;
  key?: Buffer;
}

/** GETs a loopback URL (https when tls is given) and resolves to its status code. */
export function httpStatus(url: string, tls?: TlsClient): Promise<number> {
  return new Promise((resolve, reject) => {
    const onResponse = (res: { statusCode?: number; resume(): void }) => {
      res.resume();
      resolve(res.statusCode ?? 0);
    };
    const req = tls
      ? httpsRequest(url, { ...tls, timeout: 2_000 }, onResponse)
      : httpRequest(url, { timeout: 2_000 }, onResponse);
    req.once("timeout", () => req.destroy(new Error(`GET ${url} timed out`)));
    req.once("error", reject);
    req.end();
  });
}

/** A probe for waitUntil: the URL answers 200. */
export const answers200 = (url: string, tls?: TlsClient) => async () => (await httpStatus(url, tls)) === 200;
