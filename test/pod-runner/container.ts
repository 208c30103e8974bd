import { spawn } from "node:child_process";
import { closeSync, openSync } from "node:fs";
import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";

/** How a container process ended, as the kubelet reports it in `state.terminated`. */
export interface Terminated {
  exitCode: number;
  signal?: string;
  reason: "Completed" | "Error" | "OOMKilled";
  message: string;
  startedAt: string;
  finishedAt: string;
}

export interface ContainerProcess {
  pid: number;
  startedAt: string;
  logFile: string;
  /** Settles once the process has exited and its termination message has been read. */
  exited: Promise<Terminated>;
  /** SIGTERM to its process group, SIGKILL after graceMs; resolves when it is gone. */
  stop(graceMs: number): Promise<Terminated>;
}

const MESSAGE_LIMIT = 4096;
const LOG_FALLBACK_LINES = 80;
const LOG_FALLBACK_BYTES = 2048;

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // The group is gone already.
  }
}

async function terminationMessage(
  path: string,
  logFile: string,
  failed: boolean,
  policy: string | undefined,
): Promise<string> {
  const message = (await readFile(path, "utf8").catch(() => "")).slice(0, MESSAGE_LIMIT);
  if (message.trim() || !failed || policy !== "FallbackToLogsOnError") return message;
  const log = await readFile(logFile, "utf8").catch(() => "");
  return log.split("\n").slice(-LOG_FALLBACK_LINES).join("\n").slice(-LOG_FALLBACK_BYTES);
}

/**
 * Starts a container's command as the leader of a new process group (so stopping it also stops
 * whatever it forks), with exactly `env`, stdout and stderr appended to `<dir>/log`. The kubelet
 * would mount the termination-message file; here the container is told its path in
 * KILN_TERMINATION_MESSAGE_PATH.
 */
export async function startContainer(options: {
  dir: string;
  argv: string[];
  env: Record<string, string>;
  cwd: string;
  terminationMessagePolicy?: string;
}): Promise<ContainerProcess> {
  await mkdir(options.dir, { recursive: true });
  const logFile = join(options.dir, "log");
  const terminationPath = join(options.dir, "termination-log");
  const [program, ...args] = options.argv;
  if (!program) throw new Error("container has an empty command line");
  const fd = openSync(logFile, "a");
  const startedAt = new Date().toISOString();
  let child: ReturnType<typeof spawn>;
  try {
    child = spawn(program, args, {
      cwd: options.cwd,
      env: { ...options.env, KILN_TERMINATION_MESSAGE_PATH: terminationPath },
      detached: true,
      stdio: ["ignore", fd, fd],
    });
  } finally {
    closeSync(fd);
  }
  const pid = child.pid;
  if (pid === undefined) throw new Error(`could not start ${program}; see ${logFile}`);
  const exited = new Promise<Terminated>((resolve) => {
    let done = false;
    const finish = async (code: number | null, signal: NodeJS.Signals | null) => {
      if (done) return;
      done = true;
      // The leader is gone; anything it left in its group goes with it.
      signalGroup(pid, "SIGKILL");
      const exitCode = code ?? 128 + (signal === "SIGKILL" ? 9 : signal === "SIGTERM" ? 15 : 1);
      resolve({
        exitCode,
        ...(signal ? { signal } : {}),
        reason: exitCode === 0 ? "Completed" : "Error",
        message: await terminationMessage(
          terminationPath,
          logFile,
          exitCode !== 0,
          options.terminationMessagePolicy,
        ),
        startedAt,
        finishedAt: new Date().toISOString(),
      });
    };
    child.once("exit", (code, signal) => void finish(code, signal));
    child.once("error", () => void finish(127, null));
  });
  return {
    pid,
    startedAt,
    logFile,
    exited,
    async stop(graceMs) {
      signalGroup(pid, "SIGTERM");
      const killer = setTimeout(() => signalGroup(pid, "SIGKILL"), graceMs);
      const result = await exited;
      clearTimeout(killer);
      return result;
    },
  };
}
