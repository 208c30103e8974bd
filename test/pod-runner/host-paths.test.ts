import { mkdtemp, rm, stat } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { V1HostPathVolumeSource, V1Pod } from "@kubernetes/client-node";
import { afterEach, beforeEach, describe, expect, test } from "vitest";
import { checkHostPathMounts } from "./host-paths.js";

let work: string;
beforeEach(async () => {
  work = await mkdtemp(join(tmpdir(), "runner-hostpath-"));
});
afterEach(async () => {
  await rm(work, { recursive: true, force: true });
});

const podWith = (hostPath: V1HostPathVolumeSource): V1Pod => ({
  metadata: { name: "p", namespace: "ns" },
  spec: { containers: [], volumes: [{ name: "store", hostPath }] },
});

describe("hostPath mounts", () => {
  test("a hostPath mounted at its own path is accepted, and DirectoryOrCreate creates it", async () => {
    const path = join(work, "store");
    await checkHostPathMounts(podWith({ path, type: "DirectoryOrCreate" }), {
      name: "builder",
      volumeMounts: [{ name: "store", mountPath: path }],
    });
    expect((await stat(path)).isDirectory()).toBe(true);
  });

  test("a hostPath mounted elsewhere is refused, naming both paths", async () => {
    await expect(
      checkHostPathMounts(podWith({ path: join(work, "store") }), {
        name: "runtime",
        volumeMounts: [{ name: "store", mountPath: "/var/lib/kiln" }],
      }),
    ).rejects.toThrow(`hostPath ${join(work, "store")} is mounted at /var/lib/kiln`);
  });
});
