import { mkdir } from "node:fs/promises";
import { join } from "node:path";
import { sha256File } from "../../lib/file-sha256.js";
import type { EngineManifest } from "../../lib/manifest.js";
import { MANIFEST_VERSION } from "../../lib/manifest.js";
import { type ObjectStore, openObjectStore } from "../../lib/object-store.js";
import { build, inspect, type Precision } from "../../native/binding/index.js";
import { benchmarkEngine } from "./benchmark.js";
import { prepareCalibration } from "./calibration.js";
import { type FetchEnv, fetchModel } from "./fetch/index.js";
import type { BuildJob } from "./job-spec.js";
import { type ProgressSink, stage } from "./progress.js";
import { publishEngine, publishedEngine, resultOf, writeTerminationMessage } from "./publish.js";
import { storeProgress } from "./store-progress.js";
import { checkEngineTarget } from "./target.js";
import { tuningSummary } from "./tuning-summary.js";

export interface BuildRun {
  job: BuildJob;
  fetchEnv: FetchEnv;
  workDir: string;
  terminationPath: string;
  progress: ProgressSink;
  signal: AbortSignal;
  /** A progress.json write failed (progress is advisory; the build goes on). */
  onProgressWriteError?: (err: Error) => void;
}

/**
 * The build Job's steps in order: done already? fetch, calibrate, compile, verify, publish. Every
 * step is safe to repeat, so a retried Job (or two racing ones) converge on one published engine.
 */
export async function runBuild(run: BuildRun): Promise<{ cached: boolean; manifest: EngineManifest }> {
  const { job } = run;
  const store = openObjectStore(job.store);
  const report = storeProgress(store, job.key, { onError: run.onProgressWriteError });
  const progress: ProgressSink = (event) => {
    run.progress(event);
    report.sink(event);
  };
  try {
    return await buildSteps(run, store, progress);
  } finally {
    await report.flush();
  }
}

async function buildSteps(
  run: BuildRun,
  store: ObjectStore,
  progress: ProgressSink,
): Promise<{ cached: boolean; manifest: EngineManifest }> {
  const { job } = run;

  const existing = await publishedEngine(store, job.key);
  if (existing) {
    progress({
      phase: "cached",
      percent: 100,
      message: `engine ${job.key.slice(0, 10)} is already published`,
    });
    await writeTerminationMessage(
      run.terminationPath,
      resultOf(store.uri(`engines/${job.key}/engine.kiln`), existing),
    );
    return { cached: true, manifest: existing };
  }

  await mkdir(run.workDir, { recursive: true });
  const fetchProgress = stage(progress, "fetch", 0, 20);
  // Reported before the first byte: a source that cannot be read then shows in status as the step
  // the build stopped at, even when it fails before any download progress.
  fetchProgress(0, `fetching ${job.model.source}`);
  const model = await fetchModel(
    job.model.source,
    job.model.revision,
    join(run.workDir, "model"),
    run.fetchEnv,
    fetchProgress,
  );
  fetchProgress(1, `${model.files.length} model files at revision ${model.revision}`);
  run.signal.throwIfAborted();

  let calibrationPath: string | undefined;
  if (job.engine.precision === "fp8") {
    const cal = await prepareCalibration({
      modelDir: model.dir,
      ...job.engine.calibration,
      maxInputLen: job.engine.maxInputLen,
      pvcRoot: run.fetchEnv.pvcRoot,
      out: join(run.workDir, "calibration.jsonl"),
    });
    stage(
      progress,
      "calibrate",
      20,
      22,
    )(1, `tokenized ${cal.samples} calibration samples (${cal.tokens} tokens)`);
    calibrationPath = cal.path;
  }

  const enginePath = join(run.workDir, "engine.kiln");
  const compile = stage(progress, "compile", 22, 85);
  const built = await build(
    {
      modelDir: model.dir,
      outPath: enginePath,
      precision: job.engine.precision as Precision,
      maxSeqLen: job.engine.maxSeqLen,
      maxBatch: job.engine.maxBatchSize,
      toolchainVersion: job.toolchainVersion,
      ...(calibrationPath ? { calibrationPath } : {}),
      ...(job.engine.lmHeadPrecision ? { lmHeadPrecision: job.engine.lmHeadPrecision } : {}),
    },
    { signal: run.signal, onProgress: (p) => compile(p.percent / 100, `${p.phase}: ${p.message}`) },
  );

  // Every byte on disk, once, against the digest the writer took from memory: the benchmark's load
  // below and the runtime then trust it (section checksums and the file's hash are not redone).
  const onDisk = await sha256File(enginePath);
  if (onDisk !== built.sha256) {
    throw new Error(
      `engine ${enginePath}: the file on disk hashes to ${onDisk}, the build wrote ${built.sha256}`,
    );
  }
  const header = inspect(enginePath, { verifySections: false });
  const { fingerprint } = checkEngineTarget(header, job.target);
  stage(
    progress,
    "verify",
    85,
    87,
  )(1, `engine ${built.sha256.slice(0, 12)} (${built.bytes} bytes) for ${fingerprint}`);

  const bench = stage(progress, "benchmark", 87, 90);
  bench(0, `benchmarking on ${fingerprint}`);
  const benchmark = await benchmarkEngine(enginePath, built.sha256, job.engine);
  bench(
    1,
    `batch 1: ${benchmark.batch1.tokensPerSecond.toFixed(1)} tok/s, TTFT ${benchmark.batch1.ttftMs.toFixed(1)} ms; ` +
      `batch ${benchmark.maxBatch.batchSize}: ${benchmark.maxBatch.tokensPerSecond.toFixed(1)} tok/s`,
  );
  run.signal.throwIfAborted();

  const manifest: EngineManifest = {
    manifestVersion: MANIFEST_VERSION,
    key: job.key,
    sha256: built.sha256,
    sizeBytes: built.bytes,
    toolchain: { version: job.toolchainVersion },
    target: { ...job.target, fingerprint },
    inputs: job.spec,
    source: { uri: job.model.source, revision: model.revision, files: model.files },
    tuning: tuningSummary(header),
    benchmark,
    builtAt: new Date().toISOString(),
  };
  const upload = stage(progress, "upload", 90, 99);
  const uri = await publishEngine(store, enginePath, manifest, (f) => upload(f, "uploading engine.kiln"));
  await writeTerminationMessage(run.terminationPath, resultOf(uri, manifest));
  progress({
    phase: "done",
    percent: 100,
    message: `published ${uri} in ${built.seconds.toFixed(1)} s of compile`,
  });
  return { cached: false, manifest };
}
