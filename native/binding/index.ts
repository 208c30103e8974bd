import { existsSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export type Precision = "fp32" | "bf16" | "fp16" | "int8-weight" | "fp8";

export interface BuildOptions {
  /** A Hugging Face checkpoint folder: config.json, *.safetensors, tokenizer files. */
  modelDir: string;
  /** Where engine.kiln is written. */
  outPath: string;
  precision: Precision;
  /** JSONL, one array of token ids per line; required for fp8. */
  calibrationPath?: string;
  /** fp8 only: the lm_head in E4M3 as well (left out: the checkpoint's dtype). */
  lmHeadPrecision?: "fp8";
  maxSeqLen?: number;
  maxBatch?: number;
  toolchainVersion?: string;
  autotune?: boolean;
  threads?: number;
}

export interface BuildProgress {
  phase: string;
  percent: number;
  message: string;
}

export interface BuildResult {
  path: string;
  sha256: string;
  bytes: number;
  seconds: number;
}

interface NativeAddon {
  build(
    options: BuildOptions,
    onProgress?: (p: BuildProgress) => void,
  ): { promise: Promise<BuildResult>; cancel(): void };
  inspect(path: string, verifySections?: boolean): string;
  version: string;
}

/** Where the addon is looked for: KILN_ADDON_PATH, else the CMake build of this checkout. */
export function addonPath(): string {
  const fromEnv = process.env.KILN_ADDON_PATH;
  if (fromEnv) return fromEnv;
  return join(dirname(fileURLToPath(import.meta.url)), "..", "build", "kiln.node");
}

let loaded: NativeAddon | undefined;

/** The loaded addon (engine.ts reaches its serving half through this). */
export function addon(): NativeAddon {
  if (loaded) return loaded;
  const path = addonPath();
  if (!existsSync(path)) {
    throw new Error(
      `kiln native addon not found at ${path}: run 'bash native/build.sh' (or set KILN_ADDON_PATH)`,
    );
  }
  loaded = createRequire(import.meta.url)(path) as NativeAddon;
  return loaded;
}

export class BuildCancelledError extends Error {
  override readonly name = "BuildCancelledError";
}

/**
 * The compiler refused the inputs: an unsupported architecture, a missing or misshapen tensor, an
 * invalid option. The same checkpoint fails the same way again, so a build Job must not retry.
 * Other build errors (I/O, memory) are the machine's and may pass on another attempt.
 */
export class BuildInputError extends Error {
  override readonly name = "BuildInputError";
}

/**
 * Compiles a checkpoint into an engine on a worker thread. Progress events arrive in order on the
 * JS thread; aborting the signal stops the build at its next check and rejects with
 * BuildCancelledError (no partial engine is left at outPath).
 */
export function build(
  options: BuildOptions,
  hooks: { onProgress?: (p: BuildProgress) => void; signal?: AbortSignal } = {},
): Promise<BuildResult> {
  const { signal, onProgress } = hooks;
  if (signal?.aborted) return Promise.reject(new BuildCancelledError("build cancelled before it started"));
  const handle = addon().build(options, onProgress);
  const onAbort = () => handle.cancel();
  signal?.addEventListener("abort", onAbort, { once: true });
  return handle.promise
    .catch((err: Error & { code?: string }) => {
      if (err.code === "KILN_BUILD_CANCELLED") throw new BuildCancelledError(err.message);
      const message = `engine build of ${options.modelDir} failed: ${err.message}`;
      if (err.code === "KILN_BUILD_INVALID_INPUT") throw new BuildInputError(message, { cause: err });
      throw new Error(message, { cause: err });
    })
    .finally(() => signal?.removeEventListener("abort", onAbort));
}

export interface InspectOptions {
  /**
   * Hash every section against the header's digests (default true). False checks the header's own
   * checksum and the sections' bounds only: for a file whose whole sha256 the caller has just
   * verified, where hashing the sections would read it all again.
   */
  verifySections?: boolean;
}

/**
 * The verified header of an engine file: its checksum and the sections' bounds always, the sections'
 * checksums unless `verifySections` is false; the target is not checked.
 */
export function inspect(path: string, options: InspectOptions = {}): Record<string, unknown> {
  return JSON.parse(addon().inspect(path, options.verifySections ?? true)) as Record<string, unknown>;
}

/** The compiler's own version, recorded in engines built without an explicit toolchain version. */
export function nativeVersion(): string {
  return addon().version;
}
