import { mkdir, readFile, rename, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { GetObjectCommand, PutObjectCommand, S3Client } from "@aws-sdk/client-s3";

/**
 * Engine storage: `s3://bucket/prefix` (any S3-compatible server) or `file:///dir` (a mounted
 * volume). Paths are relative to the prefix, e.g. `engines/<key>/manifest.json`.
 */
export interface ObjectStore {
  /** The URI of a path, as written into status and runtime env. */
  uri(path: string): string;
  get(path: string): Promise<Buffer | undefined>;
  put(path: string, body: Buffer | string): Promise<void>;
}

export interface ObjectStoreOptions {
  uri: string;
  /** S3 endpoint for non-AWS servers (path-style addressing is then used). */
  endpoint?: string;
  region?: string;
}

export function openObjectStore(opts: ObjectStoreOptions): ObjectStore {
  const url = new URL(opts.uri);
  if (url.protocol === "file:") return new FileStore(fileURLToPath(url));
  if (url.protocol === "s3:") {
    if (!url.hostname) throw new Error(`object store ${opts.uri}: s3:// URI needs a bucket`);
    return new S3Store(url.hostname, url.pathname.replace(/^\/+|\/+$/g, ""), opts);
  }
  throw new Error(`object store ${opts.uri}: scheme must be s3:// or file://`);
}

class FileStore implements ObjectStore {
  constructor(private readonly root: string) {}

  uri(path: string): string {
    return `file://${join(this.root, path)}`;
  }

  async get(path: string): Promise<Buffer | undefined> {
    try {
      return await readFile(join(this.root, path));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
  }

  async put(path: string, body: Buffer | string): Promise<void> {
    const target = join(this.root, path);
    await mkdir(dirname(target), { recursive: true });
    // Write-then-rename: a reader never sees half a manifest.
    const tmp = `${target}.tmp-${process.pid}`;
    await writeFile(tmp, body);
    await rename(tmp, target);
  }
}

class S3Store implements ObjectStore {
  private readonly client: S3Client;

  constructor(
    private readonly bucket: string,
    private readonly prefix: string,
    opts: ObjectStoreOptions,
  ) {
    this.client = new S3Client({
      region: opts.region ?? "us-east-1",
      ...(opts.endpoint ? { endpoint: opts.endpoint, forcePathStyle: true } : {}),
    });
  }

  private key(path: string): string {
    return this.prefix ? `${this.prefix}/${path}` : path;
  }

  uri(path: string): string {
    return `s3://${this.bucket}/${this.key(path)}`;
  }

  async get(path: string): Promise<Buffer | undefined> {
    try {
      const out = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.key(path) }));
      return out.Body ? Buffer.from(await out.Body.transformToByteArray()) : Buffer.alloc(0);
    } catch (err) {
      const name = (err as { name?: string }).name;
      if (name === "NoSuchKey" || name === "NotFound") return undefined;
      throw err;
    }
  }

  async put(path: string, body: Buffer | string): Promise<void> {
    await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: this.key(path), Body: body }));
  }
}
