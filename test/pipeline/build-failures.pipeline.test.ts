import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { IM_RESOURCE } from "../../operator/src/inferencemodel/reconcile.js";
import { tinyInferenceModel, writeTinyModel } from "./model.js";
import {
  failedBuildOf,
  failedBuilds,
  type PipelineRun,
  publishedFilesOf,
  startPipelineRun,
  warningEventsOf,
} from "./pipeline-run.js";

// Build failures, with the real builder process run by the pod runner: the reason reaches the
// EngineBuild's status and an Event through the Job pod's termination message, and nothing is
// published to the store.

let run: PipelineRun;

beforeAll(async () => {
  run = await startPipelineRun("failures");
  await writeTinyModel(run.stack.claimsDir);
});

afterAll(async () => {
  await run?.stop();
});

describe("build failures end in a Failed EngineBuild with the reason, and publish nothing", () => {
  test("a source that does not exist", async () => {
    const model = await tinyInferenceModel("missing-source", run.ns);
    model.spec.model.source = "pvc://models/does-not-exist";
    await run.client.create(IM_RESOURCE, model);
    const build = await failedBuildOf(run, "missing-source");
    expect(build.status?.message).toMatch(/does-not-exist/);
    expect(await warningEventsOf(run, build)).toMatch(/does-not-exist/);
    // The builder's progress.json, read by the operator when the Job failed: the step it stopped at.
    expect(build.status?.progress).toMatchObject({
      phase: "fetch",
      percent: 0,
      message: "fetching pvc://models/does-not-exist",
    });
  });

  test("a GPU target this builder cannot compile for (the CPU-only builder on the L4 node)", async () => {
    const model = await tinyInferenceModel("wrong-target", run.ns);
    model.spec.gpu.products = ["L4"];
    await run.client.create(IM_RESOURCE, model);
    const build = await failedBuildOf(run, "wrong-target");
    expect(build.spec.target).toMatchObject({ product: "L4", arch: "sm_89" });
    // The builder's own words, from its termination message: the target it was asked for.
    expect(build.status?.message).toMatch(/targets L4 \(sm_89\)/);
    expect(await warningEventsOf(run, build)).toMatch(/targets L4/);
  });

  test("no engine or manifest was published for either", async () => {
    // Only this run's failed builds: models left by earlier files of the tier may still be
    // reconciled (and legitimately built) by this file's operator under the same prefix.
    const failed = await failedBuilds(run);
    expect(failed).toHaveLength(2);
    expect(await publishedFilesOf(run, failed)).toEqual([]);
  });
});
