import { PermanentError } from "./errors.js";

interface HeaderTarget {
  backend?: string;
  fingerprint?: string;
  sm_arch?: string;
}

/**
 * The engine's recorded target must be the one the EngineBuild asked for: a Job that landed on the
 * wrong node, or a builder image without CUDA, would otherwise publish an engine no runtime loads.
 */
export function checkEngineTarget(
  header: Record<string, unknown>,
  wanted: { product: string; arch: string },
): { fingerprint: string } {
  const t = (header.target ?? {}) as HeaderTarget;
  const fingerprint = t.fingerprint ?? "unknown";
  const matches =
    wanted.arch === "cpu" ? t.backend === "cpu" : t.backend === "cuda" && t.sm_arch === wanted.arch;
  if (!matches) {
    throw new PermanentError(
      `the EngineBuild targets ${wanted.product} (${wanted.arch}) but this builder produced an engine for ${fingerprint}: ` +
        "the Job ran on the wrong node or the builder image lacks that backend",
    );
  }
  return { fingerprint };
}
