import { spawn } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import { join } from "node:path";

export interface StartedProcess {
  name: string;
  pid: number;
  command: string;
  logFile: string;
  /** Settles when the process exits; carries a one-line reason for error messages. */
  exited: Promise<string>;
}

/**
 * Starts one component as the leader of its own process group (so stopping it also stops anything
 * it forks) with stdout and stderr appended to <logDir>/<name>.log. The child is unref'd: it must
 * not keep Node alive, and it is stopped explicitly by pid.
 */
export function startProcess(
  name: string,
  command: string,
  args: string[],
  options: { logDir: string; cwd?: string; env?: NodeJS.ProcessEnv },
): StartedProcess {
  const logFile = join(options.logDir, `${name}.log`);
  const fd = openSync(logFile, "a");
  try {
    const child = spawn(command, args, {
      cwd: options.cwd,
      env: options.env ?? process.env,
      detached: true,
      stdio: ["ignore", fd, fd],
    });
    const exited = new Promise<string>((resolve) => {
      child.once("error", (err) => resolve(`${name} could not start: ${err.message}`));
      child.once("exit", (code, signal) =>
        resolve(`${name} exited (${signal ?? `code ${code}`}); see ${logFile}`),
      );
    });
    if (child.pid === undefined) {
      throw new Error(`${name}: spawning ${command} returned no pid; see ${logFile}`);
    }
    child.unref();
    return { name, pid: child.pid, command, logFile, exited };
  } finally {
    closeSync(fd);
  }
}

/**
 * True while the process exists and is not a zombie. A zombie has finished; it only waits for a
 * parent (possibly a container init that never reaps) to collect its status.
 */
export function isAlive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // The state letter follows the parenthesised command name, which may itself contain spaces.
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

/** The executable path of a live process, used to make sure a recorded pid still is what we started. */
export function commandOf(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0")[0];
  } catch {
    return undefined;
  }
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // The group is already gone; fall back to the pid itself in case it left its group.
    try {
      process.kill(pid, signal);
    } catch {
      // Already gone too.
    }
  }
}

/**
 * Stops the given process groups: SIGTERM, then SIGKILL for whatever is still alive after graceMs.
 * Resolves once none of the pids is alive; rejects, naming them, if some survive SIGKILL.
 */
export async function stopProcesses(pids: readonly number[], graceMs = 10_000): Promise<void> {
  for (const pid of pids) signalGroup(pid, "SIGTERM");
  const waitGone = async (deadline: number) => {
    while (pids.some(isAlive) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  };
  await waitGone(Date.now() + graceMs);
  const stubborn = pids.filter(isAlive);
  for (const pid of stubborn) signalGroup(pid, "SIGKILL");
  await waitGone(Date.now() + 5_000);
  const survivors = pids.filter(isAlive);
  if (survivors.length > 0)
    throw new Error(`processes ${survivors.join(", ")} are still alive after SIGKILL`);
}

/** Synchronous best-effort kill for process exit handlers, where no await can run. */
export function killProcessesNow(pids: readonly number[]): void {
  for (const pid of pids) signalGroup(pid, "SIGKILL");
}
