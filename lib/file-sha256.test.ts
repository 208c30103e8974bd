import { createHash, randomBytes } from "node:crypto";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, expect, test } from "vitest";
import { hashFileInto, sha256File, sha256Files } from "./file-sha256.js";

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

test("files hashed side by side, small ones in place and large ones on workers, keep their order", async () => {
  const sizes = [65 << 20, 3, 0, (64 << 20) + 1, 1 << 20];
  const files = await Promise.all(
    sizes.map(async (size, i) => {
      const bytes = randomBytes(size);
      const path = join(dir, `many${i}`);
      await writeFile(path, bytes);
      return { path, digest: createHash("sha256").update(bytes).digest("hex") };
    }),
  );
  for (const parallel of [1, 2, 8]) {
    expect(
      await sha256Files(
        files.map((f) => f.path),
        parallel,
      ),
    ).toEqual(files.map((f) => f.digest));
  }
});

test("a missing file among many rejects with its path, and a bad parallel count is named", async () => {
  await expect(sha256Files([join(dir, "f0"), join(dir, "absent-too")])).rejects.toThrow(/absent-too/);
  await expect(sha256Files([], 0)).rejects.toThrow(/parallel must be a positive integer, got 0/);
});

test("a prefix of a file feeds a hash as those bytes do (none, some, all)", async () => {
  const bytes = randomBytes((5 << 20) + 7);
  const path = join(dir, "prefixed");
  await writeFile(path, bytes);
  for (const n of [0, 1, 4 << 20, bytes.length]) {
    const hash = createHash("sha256");
    await hashFileInto(hash, path, n);
    expect(hash.digest("hex")).toBe(createHash("sha256").update(bytes.subarray(0, n)).digest("hex"));
  }
});
