import type { V1Job } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { publishStandInEngine } from "../../test/fixtures/stand-in-engine.js";
import type { EngineBuildSpec } from "../src/api/enginebuild.js";
import type { EngineBuild, InferenceModel } from "../src/api/types.js";
import type { KubeObject } from "../src/controller/kube.js";
import type { Lease } from "../src/controller/lease.js";
import { IM_RESOURCE } from "../src/inferencemodel/reconcile.js";
import {
  client,
  createNamespace,
  deleteNamespace,
  FakeBuilder,
  inferenceModel,
  installCrds,
  newIdentity,
  operatorEnv,
  paths,
  spawnOperator,
  startTestOperator,
  storeOf,
  type TestOperator,
  Watched,
} from "./cluster-harness.js";

const namespaces: string[] = [];
const leasePath = "/apis/coordination.k8s.io/v1/namespaces/default/leases";

beforeAll(installCrds);
afterAll(async () => {
  await Promise.all(namespaces.map(deleteNamespace));
});

async function namespace(prefix: string) {
  const ns = await createNamespace(prefix);
  namespaces.push(ns);
  return ns;
}

const untilHolder = (lease: string, holder: (h: string | undefined) => boolean, describe: string) =>
  Watched.until<Lease & KubeObject>(
    leasePath,
    { fieldSelector: `metadata.name=${lease}` },
    (o) => [...o.values()].some((l) => holder(l.spec.holderIdentity)),
    { timeoutMs: 30_000, describe },
  );

const untilReady = (ns: string, name: string, timeoutMs = 60_000) =>
  Watched.until<InferenceModel>(
    paths(ns).models,
    { fieldSelector: `metadata.name=${name}` },
    (o) => [...o.values()].some((m) => m.status?.phase === "Ready"),
    { timeoutMs, describe: `InferenceModel ${ns}/${name} Ready` },
  );

/** Successful InferenceModel reconciles this replica has run, from its /metrics. */
async function modelReconciles(operator: TestOperator): Promise<number> {
  const res = await operator.http.inject({ method: "GET", url: "/metrics" });
  const line = res.body
    .split("\n")
    .find((l) => l.startsWith('kiln_reconcile_total{controller="inferencemodel",outcome="success"}'));
  return line ? Number(line.split(" ").pop()) : 0;
}

describe("leader election and restarts", () => {
  it("lets only the leader of two replicas act, and hands over when it steps down", async () => {
    const env = operatorEnv();
    const ns = await namespace("leader");
    const builder = new FakeBuilder(ns, storeOf(env));
    await builder.ready();
    const replicas = [
      await startTestOperator(env, newIdentity()),
      await startTestOperator(env, newIdentity()),
    ];
    const identities = replicas.map((r) => r.identity);
    try {
      await untilHolder(
        env.KILN_LEASE_NAME ?? "",
        (h) => identities.includes(h ?? ""),
        "a replica holds the lease",
      );
      // The lease shows its holder a moment before that replica's own flag flips.
      const deadline = Date.now() + 30_000;
      while (replicas.filter((r) => r.isLeader()).length !== 1 && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      expect(replicas.filter((r) => r.isLeader())).toHaveLength(1);
      const leader = replicas.find((r) => r.isLeader()) as TestOperator;
      const follower = replicas.find((r) => !r.isLeader()) as TestOperator;

      await client.create(IM_RESOURCE, inferenceModel(ns, "first"));
      await untilReady(ns, "first");
      expect(await modelReconciles(leader)).toBeGreaterThan(0);
      expect(await modelReconciles(follower)).toBe(0);

      // A leader that stops releases the lease: the follower takes over without waiting it out.
      await leader.stop();
      await untilHolder(
        env.KILN_LEASE_NAME ?? "",
        (h) => h === follower.identity,
        "the follower took the lease",
      );
      await client.create(IM_RESOURCE, inferenceModel(ns, "second", { engine: { maxBatchSize: 4 } }));
      await untilReady(ns, "second");
      expect(await modelReconciles(follower)).toBeGreaterThan(0);
      expect(follower.lostLeadership).toBe(false);
    } finally {
      await Promise.all(replicas.map((r) => r.stop()));
      await builder.stop();
    }
  });

  it("converges without a duplicate Job when the operator is killed mid-build and a new one starts", async () => {
    const env = operatorEnv();
    const ns = await namespace("restart");
    const first = spawnOperator(env, newIdentity());
    // SIGKILL the moment the build Job exists: the operator dies mid-reconcile, possibly before it
    // recorded the Job in the EngineBuild's status.
    const jobs = await Watched.start<V1Job & KubeObject>(paths(ns).jobs, {}, (e) => {
      if (e.type === "ADDED") first.child.kill("SIGKILL");
    });
    const builds = await Watched.start<EngineBuild>(paths(ns).builds);
    try {
      await client.create(IM_RESOURCE, inferenceModel(ns, "survivor"));
      await jobs.until((o) => o.size === 1, { timeoutMs: 60_000, describe: "the build Job created" });
      expect(await first.exited).toBeNull();

      // The build finishes while no operator runs: the builder uploads, kwok completes the Job.
      const job = jobs.list()[0];
      const spec = JSON.parse(
        job?.spec?.template.spec?.containers[0]?.env?.find((v) => v.name === "KILN_BUILD_SPEC")?.value ??
          "{}",
      ) as EngineBuildSpec;
      await publishStandInEngine(storeOf(env), spec);
      await jobs.until((o) => [...o.values()].some((j) => (j.status?.succeeded ?? 0) > 0), {
        timeoutMs: 30_000,
        describe: "the build Job completed",
      });

      // A replacement (new identity: it must wait out the dead leader's lease) picks up from the
      // API server's state alone.
      const second = spawnOperator(env, newIdentity());
      try {
        await untilReady(ns, "survivor");
        expect(jobs.events.filter((e) => e.type === "ADDED")).toHaveLength(1);
        expect(builds.list()).toHaveLength(1);
        expect(builds.list()[0]?.status).toMatchObject({
          phase: "Succeeded",
          attempts: 1,
          jobName: job?.metadata?.name,
          cacheHit: "false",
        });
      } finally {
        second.child.kill("SIGTERM");
        // Graceful shutdown: drain, release the lease, exit 0.
        expect(await second.exited).toBe(0);
      }
    } finally {
      first.child.kill("SIGKILL");
      jobs.stop();
      builds.stop();
    }
  });
});
