/**
 * Exit codes of `kiln-build`. The build Job's podFailurePolicy fails the Job at once on
 * PERMANENT (retrying cannot fix a bad checkpoint or spec); anything else is retried with backoff.
 */
export const EXIT = {
  ok: 0,
  retryable: 75,
  permanent: 2,
} as const;

/** A failure that no retry can fix: a bad spec, an unsupported model, a missing tensor. */
export class PermanentError extends Error {
  override readonly name = "PermanentError";
}
