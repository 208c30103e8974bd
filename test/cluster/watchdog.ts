import { spawn } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";

// `tail --pid` blocks until the parent is gone (a test runner that crashed or was SIGKILLed, which
// no exit handler sees); the script then stops every process group listed in the pid file and
// removes the run dir's data and keys, leaving the logs for whoever investigates the crash.
const script = `
tail --pid="$1" -f /dev/null
pids="$(cat "$2" 2>/dev/null)"
for p in $pids; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null; done
sleep 5
for p in $pids; do kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null; done
rm -rf "$3/etcd" "$3/s3" "$3/pki"
`;

export interface Watchdog {
  pid: number;
  /** Replaces the list of process groups stopped when the parent dies. */
  track(pids: readonly number[]): void;
}

/** Starts a watchdog that stops the tracked processes if this Node process dies without stopping them. */
export function startWatchdog(runDir: string): Watchdog {
  const pidFile = join(runDir, "watchdog.pids");
  writeFileSync(pidFile, "");
  const child = spawn("bash", ["-c", script, "kiln-watchdog", String(process.pid), pidFile, runDir], {
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
