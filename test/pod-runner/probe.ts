import { request } from "node:http";
import type { V1Probe } from "@kubernetes/client-node";

/** One HTTP GET probe against 127.0.0.1:port; success is a status in [200, 400), as the kubelet has it. */
export function httpProbe(port: number, path: string, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request({ host: "127.0.0.1", port, path, method: "GET", timeout: timeoutMs }, (res) => {
      res.resume();
      const code = res.statusCode ?? 0;
      resolve(code >= 200 && code < 400);
    });
    req.once("timeout", () => req.destroy());
    req.once("error", () => resolve(false));
    req.end();
  });
}

/**
 * Runs a readiness probe on its period and reports each change of the verdict (successThreshold /
 * failureThreshold consecutive results flip it). Only httpGet probes exist in the operator's pods;
 * any other kind is reported as always ready, which the README states.
 */
export function startReadinessProbe(
  probe: V1Probe,
  resolvePort: (port: number | string) => number,
  onChange: (ready: boolean) => void,
): () => void {
  const http = probe.httpGet;
  if (!http) {
    onChange(true);
    return () => undefined;
  }
  const port = resolvePort(http.port as number | string);
  const periodMs = (probe.periodSeconds ?? 10) * 1000;
  const timeoutMs = (probe.timeoutSeconds ?? 1) * 1000;
  const successes = probe.successThreshold ?? 1;
  const failures = probe.failureThreshold ?? 3;
  let ready = false;
  let streak = 0;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;
  const tick = async () => {
    const ok = await httpProbe(port, http.path ?? "/", timeoutMs);
    if (stopped) return;
    streak = ok === ready ? 0 : streak + 1;
    if (streak >= (ready ? failures : successes)) {
      ready = !ready;
      streak = 0;
      onChange(ready);
    }
    // Until the first success, probe every 200 ms: the period is how often a *ready* pod is checked,
    // and polling fast while starting makes pods Ready as soon as they are (a test waits on it).
    timer = setTimeout(() => void tick(), ready ? periodMs : Math.min(periodMs, 200));
  };
  timer = setTimeout(() => void tick(), (probe.initialDelaySeconds ?? 0) * 1000);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
