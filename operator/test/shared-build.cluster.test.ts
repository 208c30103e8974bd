import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { EngineBuild, InferenceModel } from "../src/api/types.js";
import { IM_RESOURCE } from "../src/inferencemodel/reconcile.js";
import {
  client,
  createNamespace,
  deleteNamespace,
  FakeBuilder,
  inferenceModel,
  installCrds,
  operatorEnv,
  paths,
  startTestOperator,
  storeOf,
  type TestOperator,
  uniqueName,
  Watched,
} from "./cluster-harness.js";

// EngineBuilds are per namespace, but engine keys are content-addressed: namespaces applying the
// same model spec at once share one key, and the operator must build it once for all of them.

const env = operatorEnv();
const store = storeOf(env);
const namespaces: string[] = [];
let operator: TestOperator;

beforeAll(async () => {
  await installCrds();
  operator = await startTestOperator(env);
  for (let i = 0; i < 3; i++) namespaces.push(await createNamespace("shared"));
});

afterAll(async () => {
  await operator?.stop();
  await Promise.all(namespaces.map(deleteNamespace));
});

describe("EngineBuilds of one engine key in several namespaces", () => {
  it("run one build Job cluster-wide; every namespace's model becomes Ready on that engine", async () => {
    const builders = namespaces.map((ns) => new FakeBuilder(ns, store));
    await Promise.all(builders.map((b) => b.ready()));
    const watches = await Promise.all(
      namespaces.map(async (ns) => ({
        models: await Watched.start<InferenceModel>(paths(ns).models),
        builds: await Watched.start<EngineBuild>(paths(ns).builds),
      })),
    );
    // One revision for all: the harness's default differs per namespace to keep tests apart.
    const revision = uniqueName("rev");
    await Promise.all(
      namespaces.map((ns) =>
        client.create(
          IM_RESOURCE,
          inferenceModel(ns, "tiny", {
            model: { source: "hf://TinyLlama/TinyLlama-1.1B-Chat-v1.0", revision },
          }),
        ),
      ),
    );
    await Promise.all(
      watches.map((w, i) =>
        w.models.until((o) => [...o.values()].some((m) => m.status?.phase === "Ready"), {
          timeoutMs: 60_000,
          describe: `InferenceModel ${namespaces[i]}/tiny Ready`,
        }),
      ),
    );

    const builds = watches.flatMap((w) => w.builds.list());
    expect(builds).toHaveLength(3);
    expect(new Set(builds.map((b) => b.spec.key)).size).toBe(1);
    const jobs = builders.flatMap((b) => b.jobs);
    expect(jobs).toHaveLength(1);
    const builtIn = jobs[0]?.metadata?.namespace;
    const built = builds.filter((b) => b.status?.cacheHit === "false");
    expect(built.map((b) => b.metadata.namespace)).toEqual([builtIn]);
    expect(built[0]?.status).toMatchObject({ phase: "Succeeded", attempts: 1 });
    const hits = builds.filter((b) => b.metadata.namespace !== builtIn);
    for (const b of hits)
      expect(b.status).toMatchObject({ phase: "Succeeded", cacheHit: "true", attempts: 0 });
    for (const w of watches) {
      w.models.stop();
      w.builds.stop();
    }
    await Promise.all(builders.map((b) => b.stop()));
  });
});
