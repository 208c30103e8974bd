import { spawn } from "node:child_process";
import { mkdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { ProgressEvent } from "../src/progress.js";

const ENTRY = fileURLToPath(new URL("../bin/kiln-build", import.meta.url));

export interface BuilderRun {
  code: number | null;
  progress: ProgressEvent[];
  stderr: string;
  termination: string;
}

/** Runs the real `kiln-build build` entrypoint as a build Job's container would, env and all. */
export async function runBuilder(env: Record<string, string>, workDir: string): Promise<BuilderRun> {
  await mkdir(workDir, { recursive: true });
  const terminationPath = join(workDir, `termination-${Date.now()}-${Math.random().toString(36).slice(2)}`);
  const child = spawn(ENTRY, ["build"], {
    env: {
      PATH: process.env.PATH ?? "",
      HOME: process.env.HOME ?? "",
      KILN_TERMINATION_MESSAGE_PATH: terminationPath,
      KILN_WORK_DIR: join(workDir, "work"),
      LOG_LEVEL: "warn",
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (d: Buffer) => {
    stdout += d.toString();
  });
  child.stderr.on("data", (d: Buffer) => {
    stderr += d.toString();
  });
  const code = await new Promise<number | null>((resolve) => child.on("close", resolve));
  const progress = stdout
    .split("\n")
    .filter((l) => l.startsWith("{") && l.includes('"phase"'))
    .map((l) => JSON.parse(l) as ProgressEvent);
  const termination = await readFile(terminationPath, "utf8").catch(() => "");
  return { code, progress, stderr, termination };
}
