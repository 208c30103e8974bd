import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";

// `tail --pid` blocks until the parent is gone (a test runner that crashed or was SIGKILLed, which
// no exit handler sees); the script then stops every process group listed in the pid file.
const script = `
tail --pid="$1" -f /dev/null
pids="$(cat "$2" 2>/dev/null)"
for p in $pids; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null; done
sleep 5
for p in $pids; do kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null; done
`;

export interface Watchdog {
  pid: number;
  /** Replaces the list of process groups stopped when the parent dies. */
  track(pids: readonly number[]): void;
}

/** Starts a watchdog that stops the tracked processes if this Node process dies without stopping them. */
export function startWatchdog(pidFile: string): Watchdog {
  writeFileSync(pidFile, "");
  const child = spawn("bash", ["-c", script, "kiln-watchdog", String(process.pid), pidFile], {
    detached: true,
    stdio: "ignore",
  });
  if (child.pid === undefined) throw new Error("could not start the cluster watchdog (bash)");
  child.unref();
  return {
    pid: child.pid,
    track: (pids) => writeFileSync(pidFile, `${pids.join(" ")}\n`),
  };
}
