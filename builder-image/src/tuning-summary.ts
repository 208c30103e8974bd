/** The engine header's autotune table, as the compiler writes it. */
interface AutotuneTable {
  enabled?: boolean;
  device?: string;
  entries?: { op?: string; n?: number; k?: number; bucket?: number; tactic?: string; us?: number }[];
}

/**
 * A short summary of what the autotuner chose, for the manifest and EngineBuild status (which must
 * stay small: it travels in a 4 KiB termination message). The full table stays in the engine.
 */
export function tuningSummary(header: Record<string, unknown>): Record<string, unknown> {
  const table = (header.autotune ?? {}) as AutotuneTable;
  const entries = table.entries ?? [];
  const tactics: Record<string, number> = {};
  for (const e of entries) if (e.tactic) tactics[e.tactic] = (tactics[e.tactic] ?? 0) + 1;
  const shapes = new Set(entries.map((e) => `${e.op}:${e.n}x${e.k}`));
  return {
    autotuned: table.enabled === true,
    device: table.device ?? "unknown",
    gemmShapes: shapes.size,
    choices: entries.length,
    tactics,
  };
}
