// The one place the runtime image reaches into the native serving runtime: tests of the HTTP layer
// use a fake ServingEngine instead, and only start-up (main.ts) imports this file.

import { loadEngine as loadNativeEngine, targetFingerprint } from "../../native/binding/engine.js";
import type { EngineLoadOptions, ServingEngine } from "../../native/binding/engine-types.js";

/** Loads a verified engine file into the native serving runtime and starts its loop. */
export function loadEngine(path: string, options: EngineLoadOptions): Promise<ServingEngine> {
  return loadNativeEngine(path, options);
}

/** This machine's target fingerprint, as the native backend computes it and engines record it. */
export function localTargetFingerprint(): string {
  return targetFingerprint();
}
