import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { componentLogger } from "../../lib/logging.js";
import { BuildCancelledError, BuildInputError } from "../../native/binding/index.js";
import { runBuild } from "./build-engine.js";
import { EXIT, PermanentError } from "./errors.js";
import { fetchEnvFrom } from "./fetch/index.js";
import { buildJobFromEnv } from "./job-spec.js";
import { jsonLineProgress } from "./progress.js";

const USAGE = `usage: kiln-build build

Runs one engine build as the operator's build Job describes it in the environment:
  KILN_ENGINE_KEY, KILN_BUILD_SPEC, KILN_STORE_URI [, KILN_STORE_ENDPOINT, KILN_STORE_REGION]
store credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
model credentials (the model's Secret, keys prefixed KILN_MODEL_): HF_TOKEN, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
optional: HF_ENDPOINT, KILN_PVC_ROOT, KILN_WORK_DIR, KILN_TERMINATION_MESSAGE_PATH

exit codes: 0 built or already published, ${EXIT.permanent} permanent failure (do not retry), ${EXIT.retryable} retryable failure`;

async function main(argv: string[]): Promise<number> {
  const log = componentLogger("builder");
  if (argv[0] !== "build") {
    process.stderr.write(`${USAGE}\n`);
    return argv[0] === "--help" || argv[0] === "-h" ? EXIT.ok : EXIT.permanent;
  }
  const env = process.env;
  const terminationPath = env.KILN_TERMINATION_MESSAGE_PATH ?? "/dev/termination-log";
  // A deleted Job or an expired deadline sends SIGTERM: stop the compiler at its next check.
  const abort = new AbortController();
  for (const sig of ["SIGTERM", "SIGINT"] as const) process.once(sig, () => abort.abort());
  try {
    const job = buildJobFromEnv(env);
    log.info(
      { key: job.key, source: job.model.source, precision: job.engine.precision, target: job.target },
      "build starts",
    );
    const { cached, manifest } = await runBuild({
      job,
      fetchEnv: fetchEnvFrom(env),
      workDir: env.KILN_WORK_DIR ?? join("/tmp/kiln-build", job.key),
      terminationPath,
      progress: jsonLineProgress(),
      signal: abort.signal,
      onProgressWriteError: (err) => log.warn({ err }, "could not write progress.json"),
    });
    log.info({ key: job.key, cached, sha256: manifest.sha256, sizeBytes: manifest.sizeBytes }, "build done");
    return EXIT.ok;
  } catch (err) {
    const cancelled = err instanceof BuildCancelledError || abort.signal.aborted;
    // A cancelled build may have been cut short by a dying node: never permanent.
    const permanent = !cancelled && (err instanceof PermanentError || err instanceof BuildInputError);
    const message = err instanceof Error ? err.message : String(err);
    log.error({ err, permanent, cancelled }, "build failed");
    await writeFile(terminationPath, JSON.stringify({ error: message, permanent })).catch(() => undefined);
    return permanent ? EXIT.permanent : EXIT.retryable;
  }
}

process.exitCode = await main(process.argv.slice(2));
