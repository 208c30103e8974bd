import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, expect, test } from "vitest";
import { sha256File } from "./file-sha256.js";

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), "kiln-sha-"));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

test.each([0, 1, (4 << 20) - 1, 4 << 20, (9 << 20) + 3])(
  "a file of %i bytes hashes as its bytes do",
  async (size) => {
    const bytes = randomBytes(size);
    const path = join(dir, `f${size}`);
    await writeFile(path, bytes);
    expect(await sha256File(path)).toBe(createHash("sha256").update(bytes).digest("hex"));
  },
);

test("a missing file rejects with its path", async () => {
  await expect(sha256File(join(dir, "absent"))).rejects.toThrow(/absent/);
});
