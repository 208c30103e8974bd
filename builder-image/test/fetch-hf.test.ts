import { createHash, randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { PermanentError } from "../src/errors.js";
import { fetchFromHf } from "../src/fetch/hf.js";

// A stand-in for the Hub's HTTP API on loopback (no network here): the model-info endpoint, file
// downloads with Range support, and a bearer token check like a private repository's.
const SHA = "0123456789abcdef0123456789abcdef01234567";
const TOKEN = "hf_test_token";
const files: Record<string, Buffer> = {
  "config.json": Buffer.from('{"architectures":["LlamaForCausalLM"]}'),
  "model.safetensors": randomBytes(200_000),
  "README.md": Buffer.from("# not a model file"),
  "pytorch_model.bin": randomBytes(1000),
};
const ranges: string[] = [];
let server: Server;
let endpoint: string;
let work: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), "kiln-hf-test-"));
  server = createServer((req, res) => {
    if (req.headers.authorization !== `Bearer ${TOKEN}`) {
      res.writeHead(401).end('{"error":"Invalid credentials"}');
      return;
    }
    const url = req.url ?? "";
    if (url === "/api/models/org/flaky/revision/main") {
      res.writeHead(503).end("try later");
      return;
    }
    if (url === "/api/models/org/tiny/revision/main") {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(
        JSON.stringify({
          sha: SHA,
          siblings: Object.entries(files).map(([n, b]) => ({ rfilename: n, size: b.length })),
        }),
      );
      return;
    }
    const m = /^\/org\/tiny\/resolve\/([0-9a-f]+)\/(.+)$/.exec(url);
    const body = m?.[1] === SHA && m[2] ? files[m[2]] : undefined;
    if (!body) {
      res.writeHead(404).end("Entry not found");
      return;
    }
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
    if (range?.[1]) {
      ranges.push(`${m?.[2]}:${range[1]}`);
      const start = Number(range[1]);
      res.writeHead(206, { "content-length": body.length - start });
      res.end(body.subarray(start));
      return;
    }
    res.writeHead(200, { "content-length": body.length });
    res.end(body);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  await new Promise((resolve) => server.close(resolve));
  await rm(work, { recursive: true, force: true });
});

const noProgress = () => undefined;

describe("hf:// fetch", () => {
  test("pins the revision to the commit sha and fetches only model files, hashing each", async () => {
    const into = join(work, "full");
    const got = await fetchFromHf("hf://org/tiny", into, { endpoint, token: TOKEN }, noProgress);
    expect(got.revision).toBe(SHA);
    expect(got.files.map((f) => f.path)).toEqual(["config.json", "model.safetensors"]);
    const safetensors = files["model.safetensors"] as Buffer;
    expect(got.files[1]).toEqual({
      path: "model.safetensors",
      sizeBytes: safetensors.length,
      sha256: createHash("sha256").update(safetensors).digest("hex"),
    });
    expect(existsSync(join(into, "README.md"))).toBe(false);
  });

  test("a download cut off midway resumes from its .part with a Range request", async () => {
    const into = join(work, "resume");
    await mkdir(into, { recursive: true });
    const full = files["model.safetensors"] as Buffer;
    await writeFile(join(into, "model.safetensors.part"), full.subarray(0, 77_777));
    const got = await fetchFromHf("hf://org/tiny", into, { endpoint, token: TOKEN }, noProgress);
    expect(ranges).toContain("model.safetensors:77777");
    // Hashed as it streamed in, the kept prefix first: the digest is the whole file's.
    expect(got.files[1]?.sha256).toBe(createHash("sha256").update(full).digest("hex"));
    expect(Buffer.compare(await readFile(join(into, "model.safetensors")), full)).toBe(0);
    expect(existsSync(join(into, "model.safetensors.part"))).toBe(false);
  });

  test("a private model without a token fails permanently with the Hub's answer", async () => {
    const pending = fetchFromHf("hf://org/tiny", join(work, "denied"), { endpoint }, noProgress);
    await expect(pending).rejects.toBeInstanceOf(PermanentError);
    await expect(pending).rejects.toThrow(/HTTP 401/);
  });

  test("an unknown model fails permanently; a Hub outage is retryable", async () => {
    await expect(
      fetchFromHf("hf://org/nope", join(work, "nope"), { endpoint, token: TOKEN }, noProgress),
    ).rejects.toBeInstanceOf(PermanentError);
    const outage = fetchFromHf("hf://org/flaky", join(work, "flaky"), { endpoint, token: TOKEN }, noProgress);
    await expect(outage).rejects.toThrow(/HTTP 503/);
    await expect(outage).rejects.not.toBeInstanceOf(PermanentError);
  });

  test("a malformed source is refused before any request", async () => {
    await expect(fetchFromHf("hf://just-a-name", work, { endpoint }, noProgress)).rejects.toThrow(
      /expected hf:\/\/<org>\/<name>/,
    );
  });
});
