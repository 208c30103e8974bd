import type {
  V1ContainerState,
  V1ContainerStatus,
  V1PodCondition,
  V1PodStatus,
} from "@kubernetes/client-node";
import type { Terminated } from "./container.js";

/** The node's address: its processes listen on 127.0.0.1 ports. */
export const HOST_IP = "127.0.0.1";

/**
 * The API server refuses loopback addresses in EndpointSlices, so each pod gets a distinct address
 * from a range nothing routes (kwok uses 10.244.0.0/16); clients reach the pod through the runner's
 * port mapping on 127.0.0.1 instead (see PORTS_ANNOTATION).
 */
export function fakePodIp(n: number): string {
  return `10.250.${(n >> 8) & 255}.${n & 255}`;
}

/** What the runner knows about a pod's one container, from which its status is derived. */
export interface ContainerView {
  name: string;
  image: string;
  pid?: number;
  startedAt?: string;
  waiting?: { reason: string; message: string };
  terminated?: Terminated;
  lastTerminated?: Terminated;
  ready: boolean;
  restartCount: number;
  /** Set once the pod is done for good (restartPolicy allows no further run). */
  final: boolean;
}

const terminatedState = (t: Terminated): V1ContainerState => ({
  terminated: {
    exitCode: t.exitCode,
    ...(t.signal ? { signal: { SIGTERM: 15, SIGKILL: 9 }[t.signal] ?? 0 } : {}),
    reason: t.reason,
    message: t.message,
    startedAt: t.startedAt as unknown as Date,
    finishedAt: t.finishedAt as unknown as Date,
  },
});

function stateOf(c: ContainerView): V1ContainerState {
  if (c.terminated) return terminatedState(c.terminated);
  if (c.pid !== undefined) return { running: { startedAt: c.startedAt as unknown as Date } };
  return { waiting: c.waiting ?? { reason: "ContainerCreating", message: "" } };
}

/**
 * The pod status the kubelet would write: phase from the container (Succeeded/Failed only once no
 * restart will follow), conditions, and the container status with exit code and termination message.
 */
export function podStatusFor(c: ContainerView, podIP: string, startTime: string, now: string): V1PodStatus {
  const phase = c.final
    ? c.terminated?.exitCode === 0
      ? "Succeeded"
      : "Failed"
    : c.pid !== undefined || c.restartCount > 0
      ? "Running"
      : "Pending";
  const ready = c.ready && c.pid !== undefined;
  const cond = (type: string, status: boolean, reason?: string): V1PodCondition => ({
    type,
    status: status ? "True" : "False",
    lastTransitionTime: now as unknown as Date,
    ...(reason ? { reason } : {}),
  });
  const status: V1ContainerStatus = {
    name: c.name,
    image: c.image,
    imageID: `pod-runner://${c.image}`,
    ready,
    started: c.pid !== undefined,
    restartCount: c.restartCount,
    state: stateOf(c),
    ...(c.lastTerminated ? { lastState: terminatedState(c.lastTerminated) } : {}),
    ...(c.pid !== undefined ? { containerID: `pod-runner://${c.pid}` } : {}),
  };
  return {
    phase,
    hostIP: HOST_IP,
    hostIPs: [{ ip: HOST_IP }],
    podIP,
    podIPs: [{ ip: podIP }],
    startTime: startTime as unknown as Date,
    conditions: [
      cond("PodReadyToStartContainers", true),
      cond("Initialized", true),
      cond("ContainersReady", ready, ready ? undefined : "ContainersNotReady"),
      cond("Ready", ready, ready ? undefined : "ContainersNotReady"),
      cond("PodScheduled", true),
    ],
    containerStatuses: [status],
  };
}
