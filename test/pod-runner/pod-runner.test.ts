import { mkdir, mkdtemp, readlink, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { V1Pod } from "@kubernetes/client-node";
import { describe, expect, test } from "vitest";
import { PVC_MOUNT_ROOT } from "../../lib/manifest.js";
import { linkClaimMounts } from "./claims.js";
import { ContainerConfigError, expandReferences, resolveContainerEnv } from "./env.js";
import { commandLineFor, imageEntryFor, repositoryOf } from "./images.js";
import { fakePodIp, podStatusFor } from "./pod-status.js";

describe("image table", () => {
  test("an image maps by repository whatever its registry, tag or digest", () => {
    expect(repositoryOf("ghcr.io/kiln/builder:0.1.0")).toBe("kiln/builder");
    expect(repositoryOf("localhost:5000/kiln/runtime@sha256:abc")).toBe("kiln/runtime");
    expect(repositoryOf("kiln/builder")).toBe("kiln/builder");
    expect(imageEntryFor("mirror.local/team/kiln/runtime:tc-2")).toBe(imageEntryFor("kiln/runtime"));
    expect(imageEntryFor("ghcr.io/kiln-dev/kiln-builder:0.1.0")).toBe(imageEntryFor("kiln/builder"));
    expect(imageEntryFor("kiln/builder")).not.toBe(imageEntryFor("kiln/runtime"));
    expect(imageEntryFor("nginx:1.27")).toBeUndefined();
  });

  test("args replace CMD, and a command must name the image's entrypoint", () => {
    const builder = imageEntryFor("kiln/builder:1");
    if (!builder) throw new Error("no builder entry");
    expect(commandLineFor(builder, { args: ["build"] })).toEqual([...builder.entrypoint(), "build"]);
    expect(commandLineFor(builder, { command: ["kiln-build"], args: ["build"] })).toEqual([
      ...builder.entrypoint(),
      "build",
    ]);
    expect(() => commandLineFor(builder, { image: "kiln/builder:1", command: ["/bin/sh"] })).toThrow(
      /not its entrypoint/,
    );
  });
});

describe("claim mounts", () => {
  const podWith = (claim: string): V1Pod => ({
    metadata: { name: "p", namespace: "ns" },
    spec: {
      containers: [],
      volumes: [
        { name: "pvc-0", persistentVolumeClaim: { claimName: claim, readOnly: true } },
        { name: "scratch", emptyDir: {} },
      ],
    },
  });

  test("only the claims a container mounts under the claim root appear in its claims folder", async () => {
    const work = await mkdtemp(join(tmpdir(), "runner-claims-"));
    try {
      const claimsDir = join(work, "claims");
      await mkdir(join(claimsDir, "models", "tiny"), { recursive: true });
      await mkdir(join(claimsDir, "other"), { recursive: true });
      await writeFile(join(claimsDir, "models", "tiny", "config.json"), "{}");
      const root = await linkClaimMounts(
        podWith("models"),
        {
          name: "builder",
          volumeMounts: [
            { name: "pvc-0", mountPath: `${PVC_MOUNT_ROOT}/models`, readOnly: true },
            { name: "scratch", mountPath: "/scratch" },
          ],
        },
        claimsDir,
        join(work, "container", "pvc"),
      );
      expect(await readlink(join(root, "models"))).toBe(join(claimsDir, "models"));
      await expect(readlink(join(root, "other"))).rejects.toThrow(/ENOENT/);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });

  test("a claim mounted outside the claim root is refused, naming the mount", async () => {
    const work = await mkdtemp(join(tmpdir(), "runner-claims-"));
    try {
      await expect(
        linkClaimMounts(
          podWith("models"),
          { name: "builder", volumeMounts: [{ name: "pvc-0", mountPath: "/data" }] },
          join(work, "claims"),
          join(work, "pvc"),
        ),
      ).rejects.toThrow(/claim models is mounted at \/data/);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });
});

describe("container environment", () => {
  const pod: V1Pod = {
    metadata: { name: "p", namespace: "ns", labels: { app: "x" } },
    spec: { containers: [] },
  };
  const data: Record<string, Record<string, string>> = {
    "Secret/ns/creds": { AWS_ACCESS_KEY_ID: "id", AWS_SECRET_ACCESS_KEY: "secret" },
    "ConfigMap/ns/cfg": { level: "debug" },
  };
  const read = async (kind: string, ns: string, name: string) => data[`${kind}/${ns}/${name}`];
  const ips = { podIP: "10.250.0.1", hostIP: "127.0.0.1" };

  test("envFrom, then env in order, with $(VAR) references, key refs and field refs", async () => {
    const env = await resolveContainerEnv(
      pod,
      {
        name: "c",
        envFrom: [{ secretRef: { name: "creds" } }, { configMapRef: { name: "cfg" }, prefix: "CFG_" }],
        env: [
          { name: "A", value: "a" },
          { name: "B", value: "$(A)-$(CFG_level)-$$(A)-$(UNKNOWN)" },
          { name: "LEVEL", valueFrom: { configMapKeyRef: { name: "cfg", key: "level" } } },
          { name: "IP", valueFrom: { fieldRef: { fieldPath: "status.podIP" } } },
          { name: "APP", valueFrom: { fieldRef: { fieldPath: "metadata.labels['app']" } } },
          { name: "OPT", valueFrom: { secretKeyRef: { name: "nope", key: "k", optional: true } } },
        ],
      },
      read,
      ips,
    );
    expect(env).toEqual({
      AWS_ACCESS_KEY_ID: "id",
      AWS_SECRET_ACCESS_KEY: "secret",
      CFG_level: "debug",
      A: "a",
      B: "a-debug-$(A)-$(UNKNOWN)",
      LEVEL: "debug",
      IP: "10.250.0.1",
      APP: "x",
    });
  });

  test("a missing Secret or key is a container config error naming it", async () => {
    const missing = resolveContainerEnv(
      pod,
      { name: "c", envFrom: [{ secretRef: { name: "gone" } }] },
      read,
      ips,
    );
    await expect(missing).rejects.toThrow(ContainerConfigError);
    await expect(missing).rejects.toThrow("Secret ns/gone not found");
    await expect(
      resolveContainerEnv(
        pod,
        { name: "c", env: [{ name: "K", valueFrom: { secretKeyRef: { name: "creds", key: "nokey" } } }] },
        read,
        ips,
      ),
    ).rejects.toThrow("Secret ns/creds has no key nokey (env K)");
  });

  test("$$ escapes and unknown references stay as written", () => {
    expect(expandReferences("$$(X) $(X) $(Y)", { X: "1" })).toBe("$(X) 1 $(Y)");
  });
});

describe("pod status", () => {
  const base = { name: "c", image: "kiln/builder:1", ready: false, restartCount: 0, final: false };
  const terminated = (exitCode: number) => ({
    exitCode,
    reason: exitCode === 0 ? ("Completed" as const) : ("Error" as const),
    message: exitCode === 0 ? '{"uri":"s3://b/k"}' : "boom",
    startedAt: "2026-01-01T00:00:00Z",
    finishedAt: "2026-01-01T00:00:01Z",
  });

  test("phase follows the container: Pending, Running, then Succeeded or Failed only when final", () => {
    const now = "2026-01-01T00:00:00Z";
    expect(podStatusFor(base, fakePodIp(1), now, now).phase).toBe("Pending");
    const running = podStatusFor({ ...base, pid: 42, startedAt: now, ready: true }, fakePodIp(1), now, now);
    expect(running.phase).toBe("Running");
    expect(running.conditions?.find((c) => c.type === "Ready")?.status).toBe("True");
    const done = podStatusFor({ ...base, terminated: terminated(0), final: true }, fakePodIp(1), now, now);
    expect(done.phase).toBe("Succeeded");
    expect(done.containerStatuses?.[0]?.state?.terminated?.message).toBe('{"uri":"s3://b/k"}');
    expect(
      podStatusFor({ ...base, terminated: terminated(2), final: true }, fakePodIp(1), now, now).phase,
    ).toBe("Failed");
    const backingOff = podStatusFor(
      {
        ...base,
        restartCount: 1,
        lastTerminated: terminated(1),
        waiting: { reason: "CrashLoopBackOff", message: "" },
      },
      fakePodIp(1),
      now,
      now,
    );
    expect(backingOff.phase).toBe("Running");
    expect(backingOff.containerStatuses?.[0]?.lastState?.terminated?.exitCode).toBe(1);
  });

  test("pod IPs are distinct and outside loopback (EndpointSlices refuse loopback)", () => {
    expect(fakePodIp(1)).toBe("10.250.0.1");
    expect(fakePodIp(257)).toBe("10.250.1.1");
  });
});
