import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { isAlive, startProcess, stopProcesses } from "./processes.js";
import { waitUntil } from "./wait.js";

describe("component processes", () => {
  let logDir = "";
  afterEach(async () => {
    await rm(logDir, { recursive: true, force: true });
  });

  it("logs to <name>.log and stops the whole process group, forked children included", async () => {
    logDir = await mkdtemp(join(tmpdir(), "kiln-processes-"));
    // The shell forks a long-running child and reports its pid; stopping the shell must stop it too.
    const proc = startProcess("forker", "bash", ["-c", 'sleep 300 & echo "child $!"; wait'], { logDir });
    let childPid = 0;
    await waitUntil(
      "forker reports its child",
      async () => {
        const match = (await readFile(proc.logFile, "utf8")).match(/child (\d+)/);
        childPid = Number(match?.[1] ?? 0);
        return childPid > 0;
      },
      { timeoutMs: 10_000, abort: proc.exited },
    );
    expect(isAlive(proc.pid)).toBe(true);
    expect(isAlive(childPid)).toBe(true);

    await stopProcesses([proc.pid], 5_000);

    expect(isAlive(proc.pid)).toBe(false);
    await waitUntil("forked child gone", async () => !isAlive(childPid), { timeoutMs: 5_000 });
  });

  it("escalates to SIGKILL for a process that ignores SIGTERM", async () => {
    logDir = await mkdtemp(join(tmpdir(), "kiln-processes-"));
    const proc = startProcess(
      "stubborn",
      "bash",
      ["-c", "trap '' TERM; echo trapped; while :; do sleep 1; done"],
      {
        logDir,
      },
    );
    await waitUntil(
      "trap installed",
      async () => (await readFile(proc.logFile, "utf8")).includes("trapped"),
      {
        timeoutMs: 10_000,
        abort: proc.exited,
      },
    );

    await stopProcesses([proc.pid], 300);

    expect(isAlive(proc.pid)).toBe(false);
    expect(await proc.exited).toContain("SIGKILL");
  });

  it("fails at once, naming the program and its log, when the program cannot be started", async () => {
    logDir = await mkdtemp(join(tmpdir(), "kiln-processes-"));
    expect(() => startProcess("missing", join(logDir, "no-such-binary"), [], { logDir })).toThrow(
      /missing: spawning .*no-such-binary returned no pid; see .*missing\.log/,
    );
  });
});
