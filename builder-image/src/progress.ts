/**
 * One JSON line per progress event on stdout: the operator surfaces the latest in EngineBuild
 * status, and a person reading `kubectl logs` sees the same words. `percent` is of the whole job.
 */
export interface ProgressEvent {
  phase: "cached" | "fetch" | "calibrate" | "compile" | "verify" | "benchmark" | "upload" | "done";
  percent: number;
  message: string;
}

export type ProgressSink = (event: ProgressEvent) => void;

export function jsonLineProgress(
  write: (line: string) => void = (l) => process.stdout.write(l),
): ProgressSink {
  let last = -1;
  let lastMessage = "";
  return (event) => {
    const percent = Math.max(0, Math.min(100, Math.floor(event.percent)));
    // Byte-level progress fires thousands of times; a line per whole percent is enough.
    if (percent === last && event.message === lastMessage) return;
    last = percent;
    lastMessage = event.message;
    write(`${JSON.stringify({ ...event, percent, time: new Date().toISOString() })}\n`);
  };
}

/** Maps a stage's own 0..100 onto its slice [from, to] of the whole job. */
export function stage(sink: ProgressSink, phase: ProgressEvent["phase"], from: number, to: number) {
  return (fraction: number, message: string) =>
    sink({ phase, percent: from + (to - from) * Math.max(0, Math.min(1, fraction)), message });
}
