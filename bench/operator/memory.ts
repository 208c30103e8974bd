// The operator's memory as the bench sees it: RSS from /proc (what a container limit counts), V8's
// heap used and total from the operator's own /metrics (prom-client's default metrics), and the
// heap left after each mark-compact from --trace-gc (an upper bound on the live set: what
// --max-old-space-size must hold, as opposed to garbage V8 has not yet collected). It also keeps
// the longest event-loop stall: time a reconcile spends waiting for the operator's own CPU.
import { readFile } from "node:fs/promises";
import { sumSeries } from "./prom.js";

export interface MemoryReading {
  rssMb: number;
  heapUsedMb: number;
  heapTotalMb: number;
  /** Longest event-loop stall since the previous reading (prom-client resets it per scrape). */
  eventLoopLagMaxMs: number;
}

const MB = 1024 * 1024;

export class MemorySampler {
  readonly peak: MemoryReading = { rssMb: 0, heapUsedMb: 0, heapTotalMb: 0, eventLoopLagMaxMs: 0 };
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly pid: number,
    private readonly metrics: () => Promise<string>,
    private readonly everyMs = 1000,
  ) {}

  async sample(): Promise<MemoryReading> {
    const status = await readFile(`/proc/${this.pid}/status`, "utf8");
    const text = await this.metrics();
    const reading = {
      rssMb: Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024,
      heapUsedMb: sumSeries(text, "nodejs_heap_size_used_bytes", {}) / MB,
      heapTotalMb: sumSeries(text, "nodejs_heap_size_total_bytes", {}) / MB,
      eventLoopLagMaxMs: sumSeries(text, "nodejs_eventloop_lag_max_seconds", {}) * 1000,
    };
    this.peak.rssMb = Math.max(this.peak.rssMb, reading.rssMb);
    this.peak.heapUsedMb = Math.max(this.peak.heapUsedMb, reading.heapUsedMb);
    this.peak.heapTotalMb = Math.max(this.peak.heapTotalMb, reading.heapTotalMb);
    this.peak.eventLoopLagMaxMs = Math.max(this.peak.eventLoopLagMaxMs, reading.eventLoopLagMaxMs);
    return reading;
  }

  start(): void {
    // A sample that fails (the operator busy past the fetch, or gone) is skipped, not fatal.
    this.timer = setInterval(() => void this.sample().catch(() => undefined), this.everyMs);
  }

  stop(): void {
    clearInterval(this.timer);
  }
}

/** CPU time (user + system) the process has used, from /proc/<pid>/stat. */
export async function cpuSeconds(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, "utf8");
  // Fields after the command name, which is in parentheses and may hold spaces.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const ticksPerSecond = 100;
  return (Number(fields[11]) + Number(fields[12])) / ticksPerSecond;
}

/** Reads V8's --trace-gc lines as they stream from the operator's stdout. */
export class GcTrace {
  peakAfterMarkCompactMb = 0;
  markCompacts = 0;
  private partial = "";

  feed(chunk: string): void {
    const lines = (this.partial + chunk).split("\n");
    this.partial = lines.pop() ?? "";
    for (const line of lines) {
      // e.g. "Mark-Compact 182.4 (201.3) -> 96.1 (188.0) MB, ..." (used (committed) before -> after)
      const m = /Mark-Compact[^\d]*[\d.]+ \([\d.]+\) -> ([\d.]+) \([\d.]+\) MB/.exec(line);
      if (!m) continue;
      this.markCompacts++;
      this.peakAfterMarkCompactMb = Math.max(this.peakAfterMarkCompactMb, Number(m[1]));
    }
  }
}
