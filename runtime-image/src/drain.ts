import type { EngineStats } from "../../native/binding/engine-types.js";
import { ApiError } from "./errors.js";

/**
 * Admission of generation requests, and the drain SIGTERM starts: once terminating, /readyz fails
 * (so the Service stops routing here); once draining, new requests get 503 while admitted ones run
 * to the end.
 */
export class Admission {
  private terminating = false;
  private draining = false;
  private inFlight = 0;
  private idle: (() => void)[] = [];

  constructor(
    private readonly maxQueuedRequests: number,
    private readonly retryAfterSeconds: number,
    private readonly stats: () => EngineStats | undefined,
  ) {}

  get isDraining(): boolean {
    return this.draining;
  }

  /** From SIGTERM on: the pod is leaving, whether or not it still admits. */
  get isTerminating(): boolean {
    return this.terminating;
  }

  /** Fails readiness from now on; requests are still admitted until drain(). */
  terminate(): void {
    this.terminating = true;
  }

  get active(): number {
    return this.inFlight;
  }

  /** Admits one request or throws the 503/429 the client gets; call the returned function when it ends. */
  admit(): () => void {
    if (this.draining) {
      throw new ApiError(
        503,
        "server is shutting down",
        "service_unavailable",
        null,
        "draining",
        this.retryAfterSeconds,
      );
    }
    const waiting = this.stats()?.waiting ?? 0;
    if (waiting >= this.maxQueuedRequests) throw this.overloaded();
    this.inFlight++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.inFlight--;
      if (this.inFlight === 0) for (const resolve of this.idle.splice(0)) resolve();
    };
  }

  overloaded(): ApiError {
    return new ApiError(
      429,
      `server is at capacity (${this.maxQueuedRequests} requests queued); retry later`,
      "rate_limit_error",
      null,
      "overloaded",
      this.retryAfterSeconds,
    );
  }

  /** Stops admitting and resolves once in-flight requests are done or the grace period ends. */
  async drain(graceMs: number): Promise<"finished" | "grace-expired"> {
    this.terminating = true;
    this.draining = true;
    if (this.inFlight === 0) return "finished";
    let timer: NodeJS.Timeout | undefined;
    const finished = new Promise<"finished">((resolve) => this.idle.push(() => resolve("finished")));
    const expired = new Promise<"grace-expired">((resolve) => {
      timer = setTimeout(() => resolve("grace-expired"), graceMs);
    });
    try {
      return await Promise.race([finished, expired]);
    } finally {
      clearTimeout(timer);
    }
  }
}

export interface ShutdownSteps {
  admission: Admission;
  /**
   * How long a pod that was ready keeps admitting after the signal while /readyz fails: endpoints
   * reach kube-proxy and load balancers seconds after a pod starts terminating, and requests they
   * route here meanwhile should be served, not refused.
   */
  delayMs: number;
  /** Whether the pod ever became ready (no Service routes to one that did not: no delay). */
  wasReady: () => boolean;
  graceMs: number;
  /** Undefined while the engine is still loading. */
  engine: () => { close(): Promise<void> } | undefined;
  closeServer: () => Promise<void>;
  exit: (code: number) => void;
  log: { info(obj: object, msg: string): void; warn(obj: object, msg: string): void };
}

/**
 * SIGTERM (and SIGINT): fail readiness and keep serving for the delay, then stop admitting, let
 * in-flight generations finish within the grace period, close the engine (cancelling whatever is
 * left) and the server, and exit 0.
 */
export function installShutdown(steps: ShutdownSteps): () => Promise<void> {
  let started: Promise<void> | undefined;
  const shutdown = () => {
    started ??= (async () => {
      steps.admission.terminate();
      if (steps.delayMs > 0 && steps.wasReady()) {
        steps.log.info(
          { delayMs: steps.delayMs },
          "terminating: not ready; still serving while the Service stops routing here",
        );
        await new Promise((resolve) => setTimeout(resolve, steps.delayMs));
      }
      steps.log.info(
        { inFlight: steps.admission.active, graceMs: steps.graceMs },
        "draining: no new requests",
      );
      const outcome = await steps.admission.drain(steps.graceMs);
      if (outcome === "grace-expired") {
        steps.log.warn({ inFlight: steps.admission.active }, "grace period over; cancelling what is left");
      }
      await steps.engine()?.close();
      await steps.closeServer();
      steps.log.info({ outcome }, "drained; exiting");
      steps.exit(0);
    })();
    return started;
  };
  process.once("SIGTERM", shutdown);
  process.once("SIGINT", shutdown);
  return shutdown;
}
