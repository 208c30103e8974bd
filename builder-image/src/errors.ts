import { BUILD_EXIT } from "../../lib/manifest.js";

/** Exit codes of `kiln-build`: the contract with the build Job's podFailurePolicy (lib/manifest.ts). */
export const EXIT = BUILD_EXIT;

/** A failure that no retry can fix: a bad spec, an unsupported model, a missing tensor. */
export class PermanentError extends Error {
  override readonly name = "PermanentError";
}
