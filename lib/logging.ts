import { type Logger, pino } from "pino";

/** The process-wide JSON logger; LOG_LEVEL picks the level (info by default). */
export const rootLogger: Logger = pino({
  level: process.env.LOG_LEVEL ?? "info",
  base: { service: process.env.KILN_SERVICE ?? "kiln" },
});

/** One child logger per component, so every line says which part of Kiln wrote it. */
export function componentLogger(component: string, bindings: Record<string, unknown> = {}): Logger {
  return rootLogger.child({ component, ...bindings });
}
