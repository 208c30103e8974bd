import { readFileSync } from "node:fs";
import type { EngineLoadOptions, ServingEngine } from "../../native/binding/engine-types.js";

// native/binding/engine.ts (the serving runtime's loader) is being written alongside this image.
// Importing it through a computed specifier keeps this package compiling until it lands; this file
// is the only place that knows where the loader lives.
const ENGINE_MODULE = "../../native/binding/engine.js";

type LoadEngine = (path: string, options?: EngineLoadOptions) => Promise<ServingEngine>;

/** Loads a verified engine file into the native serving runtime. */
export async function loadEngine(path: string, options: EngineLoadOptions): Promise<ServingEngine> {
  let loader: LoadEngine;
  try {
    ({ loadEngine: loader } = (await import(ENGINE_MODULE)) as { loadEngine: LoadEngine });
  } catch (err) {
    throw new Error(
      `the native serving runtime (${ENGINE_MODULE}) is not available: ${(err as Error).message}`,
    );
  }
  if (typeof loader !== "function") throw new Error(`${ENGINE_MODULE} exports no loadEngine()`);
  return loader(path, options);
}

/**
 * The target fingerprint of this machine, as the native CPU backend computes it
 * (native/src/backend/cpu/target.cpp: architecture + the instruction sets its kernels use). The
 * addon does not export its own answer yet; the native loader checks the target again on load, so a
 * disagreement still stops start-up, only later and less specifically.
 */
export function localTargetFingerprint(): string {
  const arch = process.arch === "x64" ? "x86_64" : process.arch === "arm64" ? "aarch64" : "unknown";
  if (arch !== "x86_64") return `cpu:${arch}:scalar`;
  let flags = new Set<string>();
  try {
    const line = readFileSync("/proc/cpuinfo", "utf8")
      .split("\n")
      .find((l) => l.startsWith("flags"));
    flags = new Set(line?.split(":")[1]?.trim().split(/\s+/) ?? []);
  } catch {
    // No /proc (not Linux): report the portable target.
  }
  return ["avx2", "fma", "f16c"].every((f) => flags.has(f))
    ? `cpu:${arch}:avx2+fma+f16c`
    : `cpu:${arch}:scalar`;
}
