// `bash scripts/demo.sh` — the README's first command, after the installs demo.sh does: a local
// control plane + S3 server, the pod runner and the operator; examples/tiny-llama.yaml applied,
// built, served, and asked for a chat completion; then it all stays up (the issue's "leaves
// everything up with instructions to stop it"). `--down` stops it; `--stop` stops at the end instead.
import { execFile } from "node:child_process";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";
import { KubeConfig } from "@kubernetes/client-node";
import { KubeClient } from "../operator/src/controller/kube.js";
import { binaryPath } from "../test/cluster/binaries.js";
import {
  type ClusterHandle,
  type ClusterInfo,
  clusterInfoOf,
  startCluster,
} from "../test/cluster/launcher.js";
import { commandOf, isAlive, stopProcesses } from "../test/cluster/processes.js";
import { serviceUrl } from "../test/pipeline/endpoint.js";
import { getModel, listBuilds } from "../test/pipeline/kube.js";
import { writeTinyModel } from "../test/pipeline/model.js";
import { type Stack, startStack } from "../test/pipeline/stack.js";
import { repoRoot } from "../test/pod-runner/images.js";

const runDir = join(repoRoot, ".kiln-run/demo");
const stateFile = join(runDir, "state.json");
const MODEL = "tiny-llama";
const NAMESPACE = "default";
const READY_TIMEOUT_MS = 300_000;
const started = Date.now();
const elapsed = () => `${((Date.now() - started) / 1000).toFixed(1).padStart(5)} s`;
const say = (line = "") => process.stdout.write(`${line}\n`);
const run = promisify(execFile);

interface DemoState {
  cluster: ClusterInfo;
  stack: Stack["processes"];
  url?: string;
}

let step = "starting";
function begin(name: string): void {
  step = name;
  say(`\n[${elapsed()}] ${name}`);
}

async function kubectl(kubeconfig: string, ...args: string[]): Promise<string> {
  const { stdout } = await run(binaryPath("kubectl"), ["--kubeconfig", kubeconfig, ...args]);
  return stdout;
}

/** Prints `kubectl get inferencemodels,enginebuilds` whenever it changes, until the model is Ready. */
async function watchProgress(client: KubeClient, kubeconfig: string): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  let last = "";
  while (Date.now() < deadline) {
    const table = await kubectl(kubeconfig, "get", "inferencemodels,enginebuilds", "-n", NAMESPACE);
    // Ages tick every second; only a change in anything else is progress worth printing.
    const withoutAge = table.replace(/\s+\S+[ \t]*$/gm, "");
    if (withoutAge !== last) {
      say(`[${elapsed()}] kubectl get inferencemodels,enginebuilds`);
      say(table.trimEnd().replace(/^/gm, "    "));
      last = withoutAge;
    }
    const model = await getModel(client, NAMESPACE, MODEL);
    if (model?.status?.phase === "Ready") return;
    const failed = (await listBuilds(client, NAMESPACE)).find((b) => b.status?.phase === "Failed");
    if (model?.status?.phase === "Failed" || failed) {
      throw new Error(
        `the model did not build: ${failed?.status?.message ?? model?.status?.message ?? "phase Failed"}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  throw new Error(`InferenceModel ${MODEL} not Ready within ${READY_TIMEOUT_MS / 1000} s`);
}

async function chat(url: string): Promise<string> {
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      model: MODEL,
      messages: [{ role: "user", content: "Hello! Who are you?" }],
      max_tokens: 24,
      temperature: 0,
    }),
  });
  const body = (await res.json()) as { choices?: { message?: { content?: string } }[] };
  if (res.status !== 200)
    throw new Error(`POST ${url}/v1/chat/completions: ${res.status} ${JSON.stringify(body)}`);
  return body.choices?.[0]?.message?.content ?? "";
}

async function readState(): Promise<DemoState | undefined> {
  try {
    return JSON.parse(await readFile(stateFile, "utf8")) as DemoState;
  } catch {
    return undefined;
  }
}

/** Recorded pids that are still the programs the demo started (a pid can be reused after exit). */
function stillOurs(processes: { pid: number; command?: string }[]): number[] {
  return processes
    .filter((p) => isAlive(p.pid) && (p.command === undefined || commandOf(p.pid) === p.command))
    .map((p) => p.pid);
}

async function down(): Promise<void> {
  const state = await readState();
  if (!state) {
    say(`no demo recorded in ${runDir}; nothing to stop`);
    return;
  }
  await stopProcesses(stillOurs(state.stack.map((p) => ({ pid: p.pid, command: process.execPath }))), 15_000);
  await stopProcesses(stillOurs(state.cluster.processes));
  await rm(runDir, { recursive: true, force: true });
  say("demo stopped: pod runner, operator and control plane are gone");
}

async function up(keep: boolean): Promise<void> {
  const previous = await readState();
  if (previous && stillOurs(previous.cluster.processes).length > 0) {
    throw new Error("a demo is already up; stop it with: bash scripts/demo.sh --down");
  }
  await rm(runDir, { recursive: true, force: true });
  await mkdir(runDir, { recursive: true });

  let cluster: ClusterHandle | undefined;
  let stack: Stack | undefined;
  const stopAll = async () => {
    await stack?.stop();
    await cluster?.stop({ keepLogs: true });
  };
  const interrupted = () => {
    say("\ninterrupted; stopping what the demo started");
    void stopAll().finally(() => process.exit(130));
  };
  process.once("SIGINT", interrupted);
  process.once("SIGTERM", interrupted);

  try {
    begin(
      "starting the local control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok) and S3",
    );
    cluster = await startCluster({
      runDir: join(runDir, "cluster"),
      stopWithParent: !keep,
      log: (line) => say(`    ${line}`),
    });
    const kubeconfig = cluster.kubeconfigPath;
    const kc = new KubeConfig();
    kc.loadFromFile(kubeconfig);
    const client = new KubeClient(kc);

    begin("starting the pod runner (this machine as node kiln-local-gpu-0) and the operator");
    stack = await startStack({
      kubeConfig: kc,
      kubeconfigPath: kubeconfig,
      s3: cluster.s3,
      runDir: join(runDir, "stack"),
      modelNamespaces: [NAMESPACE],
      toolchainVersion: "demo-1",
      storePrefix: "demo",
      stopWithParent: !keep,
    });
    const state: DemoState = { cluster: clusterInfoOf(cluster), stack: stack.processes };
    if (keep) await writeFile(stateFile, JSON.stringify(state, null, 2), { mode: 0o600 });
    say((await kubectl(kubeconfig, "get", "nodes")).trimEnd().replace(/^/gm, "    "));

    begin(
      `writing a tiny random Llama checkpoint to pvc://models/${MODEL} and applying examples/tiny-llama.yaml`,
    );
    await writeTinyModel(stack.claimsDir);
    say(
      (await kubectl(kubeconfig, "apply", "-n", NAMESPACE, "-f", join(repoRoot, "examples/tiny-llama.yaml")))
        .trimEnd()
        .replace(/^/gm, "    "),
    );

    begin("waiting for the engine build Job and the runtime rollout");
    await watchProgress(client, kubeconfig);

    begin("asking the model through its Service for a chat completion");
    const url = await serviceUrl(client, NAMESPACE, MODEL);
    if (!url)
      throw new Error(`Service ${NAMESPACE}/${MODEL} has no ready endpoint although the model is Ready`);
    const answer = await chat(url);
    say(`    POST ${url}/v1/chat/completions  "Hello! Who are you?"`);
    say(`    answer: ${JSON.stringify(answer)}`);
    say("    (random weights, so the words are noise; every step that produced them is the real one)");

    if (keep) {
      await writeFile(stateFile, JSON.stringify({ ...state, url }, null, 2), { mode: 0o600 });
      say(`\n[${elapsed()}] everything is up and stays up:`);
      say(`    export KUBECONFIG=${kubeconfig}`);
      say(`    ${binaryPath("kubectl")} get inferencemodels,enginebuilds,deployments,pods`);
      say(
        `    curl -s ${url}/v1/completions -H 'content-type: application/json' -d '{"model":"${MODEL}","prompt":"hello","max_tokens":8}'`,
      );
      say(`    logs: ${cluster.logDir} (control plane), ${stack.logDir} (pod runner, operator)`);
      say("    stop it all: bash scripts/demo.sh --down");
      return;
    }
    begin("stopping everything the demo started");
    await stack.stop();
    stack = undefined;
    await cluster.stop();
    cluster = undefined;
    await rm(runDir, { recursive: true, force: true });
    say(`\ndemo done in ${elapsed().trim()} (run it without --stop to leave it running)`);
  } catch (err) {
    process.stderr.write(`\ndemo failed while ${step}:\n  ${(err as Error).message}\n`);
    if (stack) process.stderr.write(`  pod runner and operator logs: ${stack.logDir}\n`);
    await stopAll().catch((stopErr: Error) => process.stderr.write(`  stopping: ${stopErr.message}\n`));
    process.exitCode = 1;
  } finally {
    process.off("SIGINT", interrupted);
    process.off("SIGTERM", interrupted);
  }
}

const arg = process.argv[2];
if (arg === "--down") await down();
else if (arg === undefined || arg === "--stop") await up(arg === undefined);
else {
  process.stderr.write("usage: bash scripts/demo.sh [--stop | --down]\n");
  process.exitCode = 2;
}
