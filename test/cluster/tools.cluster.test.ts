import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { binaryPath, pinnedVersion } from "./binaries.js";
import { testCluster } from "./env.js";
import { defaultGpuNodes, gpuResource } from "./gpu-nodes.js";

const run = promisify(execFile);

async function kubectl(...args: string[]): Promise<string> {
  const { stdout } = await run(binaryPath("kubectl"), [
    "--kubeconfig",
    testCluster().kubeconfigPath,
    ...args,
  ]);
  return stdout;
}

interface NodeList {
  items: {
    metadata: { name: string; labels: Record<string, string> };
    status: { capacity: Record<string, string> };
  }[];
}

describe("command-line tools against the test cluster", () => {
  it("kubectl lists the fake GPU nodes with their GPU capacity", async () => {
    const nodes = JSON.parse(await kubectl("get", "nodes", "-o", "json")) as NodeList;
    for (const expected of defaultGpuNodes) {
      const node = nodes.items.find((n) => n.metadata.name === expected.name);
      expect(node, `node ${expected.name}`).toBeDefined();
      expect(node?.status.capacity[gpuResource]).toBe(String(expected.gpus));
      expect(node?.metadata.labels["nvidia.com/gpu.product"]).toBe(expected.product);
      expect(node?.metadata.labels["kiln.dev/sm-arch"]).toBe(expected.smArch);
    }

    const table = await kubectl(
      "get",
      "nodes",
      "-o",
      "custom-columns=NAME:.metadata.name,GPUS:.status.capacity.nvidia\\.com/gpu,READY:.status.conditions[?(@.type=='Ready')].status",
      "--no-headers",
    );
    const rows = table
      .trim()
      .split("\n")
      .map((line) => line.split(/\s+/));
    for (const expected of defaultGpuNodes) {
      expect(rows).toContainEqual([expected.name, String(expected.gpus), "True"]);
    }
  });

  it("kubectl and the apiserver report the pinned Kubernetes version", async () => {
    const version = JSON.parse(await kubectl("version", "-o", "json")) as {
      clientVersion: { gitVersion: string; gitCommit: string };
      serverVersion: { gitVersion: string };
    };
    expect(version.clientVersion.gitVersion).toBe(pinnedVersion("kubectl"));
    // Source from the module proxy carries git-archive placeholders; the build must not leak them.
    expect(version.clientVersion.gitCommit).not.toContain("$Format");
    expect(version.serverVersion.gitVersion).toBe(pinnedVersion("kube-apiserver"));
  });

  it("helm runs and reports the pinned version", async () => {
    const { stdout } = await run(binaryPath("helm"), ["version", "--template", "{{.Version}}"]);
    expect(stdout).toBe(pinnedVersion("helm"));
  });
});
