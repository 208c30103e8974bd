import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { defaultRevisionResolver } from "../src/inferencemodel/revision.js";
import { config } from "./fixtures.js";

// A stand-in Hub on loopback: the resolver's HTTP request, status handling and token are real.
let hub: Server;
let endpoint: string;
const seen: { url?: string; auth?: string }[] = [];

beforeAll(async () => {
  hub = createServer((req, res) => {
    seen.push({ url: req.url, auth: req.headers.authorization });
    if (req.url === "/api/models/TinyLlama/TinyLlama-1.1B/revision/main") {
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ sha: "0123abcd" }));
    } else {
      res.statusCode = 404;
      res.end("{}");
    }
  });
  await new Promise<void>((resolve) => hub.listen(0, "127.0.0.1", resolve));
  endpoint = `http://127.0.0.1:${(hub.address() as AddressInfo).port}`;
});
afterAll(() => new Promise<void>((resolve) => hub.close(() => resolve())));

describe("revision resolution", () => {
  it("pins an hf:// source to the commit of main, sending the token", async () => {
    const resolve = defaultRevisionResolver(config, { HF_ENDPOINT: endpoint, HF_TOKEN: "hf_secret" });
    expect(await resolve("hf://TinyLlama/TinyLlama-1.1B")).toBe("0123abcd");
    expect(seen.at(-1)).toEqual({
      url: "/api/models/TinyLlama/TinyLlama-1.1B/revision/main",
      auth: "Bearer hf_secret",
    });
  });

  it("names the source and the Hub's answer when the repository is unknown", async () => {
    const resolve = defaultRevisionResolver(config, { HF_ENDPOINT: endpoint });
    await expect(resolve("hf://nobody/missing")).rejects.toThrow(
      "hf://nobody/missing: the Hub answered 404 for revision main",
    );
  });

  it("pins pvc:// sources as unversioned", async () => {
    expect(await defaultRevisionResolver(config, {})("pvc://models/llama")).toBe("unversioned");
  });
});
