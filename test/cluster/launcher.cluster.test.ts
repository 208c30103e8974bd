import { spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { CoreV1Api, KubeConfig } from "@kubernetes/client-node";
import { describe, expect, it } from "vitest";
import { testCluster } from "./env.js";
import { startCluster } from "./launcher.js";
import { isAlive } from "./processes.js";
import { waitUntil } from "./wait.js";

/** Pids of live processes whose command line mentions `text` (every component gets run-dir paths). */
function processesMentioning(text: string): number[] {
  return readdirSync("/proc")
    .filter((entry) => /^\d+$/.test(entry))
    .filter((pid) => {
      try {
        return readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(text);
      } catch {
        return false;
      }
    })
    .map(Number)
    .filter(isAlive);
}

describe("the cluster launcher", () => {
  it("runs a second cluster beside the tier's own and stops every process it started", async () => {
    const shared = testCluster();
    const cluster = await startCluster({
      gpuNodes: [{ name: "solo-h200", product: "NVIDIA-H200", smArch: "sm_90", gpus: 4 }],
      log: () => undefined,
    });
    try {
      expect(cluster.apiServerUrl).not.toBe(shared.apiServerUrl);
      expect(cluster.s3.endpoint).not.toBe(shared.s3.endpoint);
      expect(cluster.runDir).not.toBe(shared.runDir);
      expect(cluster.processes.map((p) => p.name).sort()).toEqual(
        ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "versitygw"].sort(),
      );
      expect(cluster.pids.filter(isAlive)).toEqual(cluster.pids);

      const kc = new KubeConfig();
      kc.loadFromFile(cluster.kubeconfigPath);
      const nodes = await kc.makeApiClient(CoreV1Api).listNode();
      expect(nodes.items.map((n) => n.metadata?.name)).toEqual(["solo-h200"]);
    } finally {
      await cluster.stop();
    }

    expect(cluster.pids.filter(isAlive)).toEqual([]);
    expect(existsSync(cluster.runDir)).toBe(false);
  });

  it("stops what it started and keeps the logs when startup fails", async () => {
    const runDir = await mkdtemp(join(tmpdir(), "kiln-cluster-failing-"));
    try {
      // An invalid node name is refused by the apiserver after the control plane is already running.
      const failure = await startCluster({
        runDir,
        gpuNodes: [{ name: "Not_A_DNS_Name", product: "NVIDIA-H100-80GB-HBM3", smArch: "sm_90", gpus: 8 }],
        log: () => undefined,
      }).then(
        () => undefined,
        (err: Error) => err,
      );

      expect(failure?.message).toContain("Not_A_DNS_Name");
      expect(failure?.message).toContain(join(runDir, "logs"));
      expect(processesMentioning(runDir)).toEqual([]);
      expect((await readdir(join(runDir, "logs"))).sort()).toEqual(
        expect.arrayContaining(["etcd.log", "kube-apiserver.log", "kwok.log", "versitygw.log"]),
      );
    } finally {
      await rm(runDir, { recursive: true, force: true });
    }
  });

  it("stops the cluster by itself when the process that started it is killed", async () => {
    const fixture = join(import.meta.dirname, "support", "start-and-hang.ts");
    const runner = spawn(process.execPath, ["--import", "tsx", fixture], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    try {
      const started = await new Promise<{ pids: number[]; runDir: string }>((resolve, reject) => {
        let out = "";
        runner.stdout.on("data", (chunk: Buffer) => {
          out += chunk.toString();
          if (out.includes("\n")) resolve(JSON.parse(out));
        });
        runner.once("exit", (code) =>
          reject(new Error(`fixture exited (${code}) before the cluster was up`)),
        );
      });
      expect(started.pids.filter(isAlive)).toEqual(started.pids);

      runner.kill("SIGKILL");

      await waitUntil(
        "every cluster process gone after its runner was SIGKILLed",
        async () => !started.pids.some(isAlive),
        {
          timeoutMs: 30_000,
          intervalMs: 200,
        },
      );
      await rm(started.runDir, { recursive: true, force: true });
    } finally {
      runner.kill("SIGKILL");
    }
  });
});
