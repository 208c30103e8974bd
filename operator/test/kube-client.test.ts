import http from "node:http";
import type { AddressInfo } from "node:net";
import { KubeConfig } from "@kubernetes/client-node";
import { afterEach, describe, expect, it } from "vitest";
import { KubeClient } from "../src/controller/kube.js";

const CM = { apiVersion: "v1", kind: "ConfigMap", plural: "configmaps", namespaced: true };

describe("KubeClient", () => {
  let server: http.Server | undefined;
  afterEach(() => new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve())));

  it("sends every request over one kept-alive connection, with the kubeconfig's credentials on each", async () => {
    let connections = 0;
    const tokens: (string | undefined)[] = [];
    server = http.createServer((req, res) => {
      tokens.push(req.headers.authorization);
      res.setHeader("content-type", "application/json");
      res.end(
        JSON.stringify({ apiVersion: "v1", kind: "ConfigMap", metadata: { name: "c", namespace: "ns" } }),
      );
    });
    server.on("connection", () => connections++);
    await new Promise<void>((resolve) => server?.listen(0, "127.0.0.1", resolve));
    const kc = new KubeConfig();
    kc.loadFromOptions({
      clusters: [
        {
          name: "c",
          server: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
          skipTLSVerify: true,
        },
      ],
      users: [{ name: "u", token: "t0ken" }],
      contexts: [{ name: "c", cluster: "c", user: "u" }],
      currentContext: "c",
    });
    const client = new KubeClient(kc);
    for (let i = 0; i < 5; i++) await client.get(CM, "ns", "c");
    server.closeAllConnections();
    expect(connections).toBe(1);
    expect(tokens).toEqual(Array(5).fill("Bearer t0ken"));
  });
});
