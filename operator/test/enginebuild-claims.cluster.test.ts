import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { V1Job, V1Pod } from "@kubernetes/client-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { PVC_MOUNT_ROOT } from "../../lib/manifest.js";
import { PV, provideClaim, volumeNameFor } from "../../test/pipeline/claims.js";
import type { EngineBuild } from "../src/api/types.js";
import type { KubeObject } from "../src/controller/kube.js";
import { IM_RESOURCE } from "../src/inferencemodel/reconcile.js";
import {
  client,
  createNamespace,
  deleteNamespace,
  inferenceModel,
  installCrds,
  operatorEnv,
  paths,
  startTestOperator,
  type TestOperator,
  Watched,
} from "./cluster-harness.js";

// pvc:// sources on a real control plane: the build Job the operator creates mounts the model's
// claim where the builder reads it, the API server accepts that pod template, and the scheduler
// places the pod once the claim is Bound. kwok runs no containers, so nothing is built here.

let operator: TestOperator;
let ns: string;
let hostDir: string;

beforeAll(async () => {
  await installCrds();
  operator = await startTestOperator(operatorEnv());
  ns = await createNamespace("claims");
  hostDir = await mkdtemp(join(tmpdir(), "kiln-claims-"));
  await provideClaim(client, ns, "models", hostDir, 30_000);
});

afterAll(async () => {
  await operator?.stop();
  if (ns) {
    await deleteNamespace(ns);
    await client.delete(PV, undefined, volumeNameFor(ns, "models")).catch(() => undefined);
  }
  if (hostDir) await rm(hostDir, { recursive: true, force: true });
});

describe("a pvc:// model's build Job", () => {
  it("mounts the claim read-only under the builder's claim root, and its pod is scheduled", async () => {
    const pods = await Watched.start<V1Pod & KubeObject>(paths(ns).pods);
    const jobs = await Watched.start<V1Job & KubeObject>(paths(ns).jobs);
    try {
      await client.create(
        IM_RESOURCE,
        inferenceModel(ns, "on-claim", { model: { source: "pvc://models/llama", revision: `rev-${ns}` } }),
      );
      await pods.until((all) => [...all.values()].some((p) => p.spec?.nodeName), {
        timeoutMs: 60_000,
        describe: `a build pod in ${ns} scheduled onto a node`,
      });
      const [job] = jobs.list();
      const pod = pods.list().find((p) => p.spec?.nodeName);
      for (const spec of [job?.spec?.template.spec, pod?.spec]) {
        expect(spec?.volumes).toContainEqual({
          name: "pvc-0",
          persistentVolumeClaim: { claimName: "models", readOnly: true },
        });
        expect(spec?.containers[0]?.volumeMounts).toContainEqual({
          name: "pvc-0",
          mountPath: `${PVC_MOUNT_ROOT}/models`,
          readOnly: true,
        });
      }
    } finally {
      pods.stop();
      jobs.stop();
    }
  });

  it("is never created for a claim name Kubernetes would refuse; the EngineBuild fails saying why", async () => {
    // The CRD's pattern already refuses most bad names at apply; a dotted name over 253 characters
    // passes it and must still be caught before a Job the API server would refuse.
    const claim = Array.from({ length: 30 }, () => "abcdefghi").join(".");
    const source = `pvc://${claim}/llama`;
    const builds = await Watched.start<EngineBuild>(paths(ns).builds);
    try {
      await client.create(
        IM_RESOURCE,
        inferenceModel(ns, "bad-claim", { model: { source, revision: `rev-${ns}` } }),
      );
      const failed = (all: Map<string, EngineBuild>) =>
        [...all.values()].find((b) => b.spec.model.source === source && b.status?.phase === "Failed");
      await builds.until((all) => failed(all) !== undefined, {
        timeoutMs: 30_000,
        describe: `the bad-claim EngineBuild in ${ns} Failed`,
      });
      const build = failed(builds.objects);
      expect(build?.status?.conditions?.[0]?.reason).toBe("InvalidSource");
      expect(build?.status?.message).toMatch(
        `claim name "${claim}" is not a valid PersistentVolumeClaim name`,
      );
      expect(build?.status?.jobName).toBeUndefined();
    } finally {
      builds.stop();
    }
  });
});
