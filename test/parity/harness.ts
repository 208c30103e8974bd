import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const parityDir = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(parityDir, "..", "..");
// Outside the source tree on purpose: biome lints every JSON file under the repo, and the
// checkpoints/reports written here are data, not source.
const kilnCache = process.env.KILN_CACHE ?? join(homedir(), ".cache", "kiln");
export const outDir = process.env.KILN_PARITY_OUT ?? join(kilnCache, "parity");
export const kilnBinary = process.env.KILN_NATIVE ?? join(repoRoot, "native", "build", "kiln-native");

/** The acceptance numbers; compare.py states the same ones in each report (checked). */
export const thresholds = {
  fp32: { tokens_identical: true, max_rel_err: 1e-4 },
  bf16: { tokens_identical: true, max_rel_err: 2e-2 },
  "int8-weight": { min_top1_agreement: 0.9, max_rel_err: 0.05 },
  fp8: { min_top1_agreement: 0.9, max_rel_err: 0.15 },
  // fp8 built with --lm-head fp8: the lm_head in E4M3 too, held to fp8's rule
  "fp8-lmhead": { min_top1_agreement: 0.9, max_rel_err: 0.15 },
} as const;
export type Precision = keyof typeof thresholds;
export const precisions = Object.keys(thresholds) as Precision[];

/** Mirrors make_checkpoints.py (a test checks that the manifest has exactly these). */
export const checkpoints = [
  { name: "llama", arch: "llama" },
  { name: "llama3-tied", arch: "llama" },
  { name: "mistral", arch: "mistral" },
  { name: "qwen2", arch: "qwen2" },
  { name: "qwen3", arch: "qwen3" },
  { name: "smollm", arch: "llama" },
  { name: "llama-sharded", arch: "llama" },
  { name: "llama-bf16", arch: "llama" },
] as const;
export const brokenCheckpoints = ["bad-gpt2", "bad-missing-tensor", "bad-misshapen-tensor"] as const;

export interface CaseReport {
  checkpoint: string;
  precision: Precision;
  passed: boolean;
  error?: string;
  thresholds: Record<string, number | boolean>;
  build: { ok: boolean; exit_code: number; stderr_tail: string };
  tokens_identical?: boolean;
  top1_agreement?: number;
  max_rel_err?: number;
  steps_compared?: number;
}

export interface BrokenReport {
  checkpoint: string;
  must_mention: string;
  exit_code: number;
  mentions: boolean;
  output_tail: string;
}

export interface ControlReport {
  control: string;
  passed: boolean;
  error?: string;
  max_rel_err?: number;
  must_exceed_rel_err: number;
}

export interface ParityReport {
  cases: CaseReport[];
  broken: BrokenReport[];
  controls: ControlReport[];
  versions: Record<string, string>;
  seconds: number;
}

/** The venv interpreter recorded by ./setup (scripts/test.sh runs it before vitest). */
export function venvPython(): string {
  const file = join(parityDir, ".python");
  if (!existsSync(file)) throw new Error(`${file} missing: run test/parity/setup first`);
  return readFileSync(file, "utf8").trim();
}

/** Runs a program (no shell), resolving with its exit code and output; rejects only if it can't start. */
export function run(cmd: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((done, fail) => {
    const child = spawn(cmd, args, { cwd: repoRoot, stdio: ["ignore", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on("data", (d: Buffer) => {
      stderr += d.toString();
    });
    child.once("error", fail);
    child.once("close", (code) => done({ code: code ?? -1, stdout, stderr }));
  });
}
