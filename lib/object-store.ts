import { randomUUID } from "node:crypto";
import { createReadStream } from "node:fs";
import { copyFile, mkdir, readdir, readFile, rename, stat, writeFile } from "node:fs/promises";
import { dirname, join, relative } from "node:path";
import type { Readable } from "node:stream";
import { fileURLToPath } from "node:url";
import {
  ChecksumAlgorithm,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from "@aws-sdk/client-s3";
import { Upload } from "@aws-sdk/lib-storage";
import { downloadRanges, type RangeOpener } from "./ranged-download.js";

/**
 * Engine and model storage: `s3://bucket/prefix` (any S3-compatible server) or `file:///dir` (a
 * mounted volume). Paths are relative to the prefix, e.g. `engines/<key>/manifest.json`.
 */
export interface ObjectStore {
  /** The URI of a path, as written into status and runtime env. */
  uri(path: string): string;
  get(path: string): Promise<Buffer | undefined>;
  put(path: string, body: Buffer | string): Promise<void>;
  /** Size of an object, or undefined when there is none. */
  size(path: string): Promise<number | undefined>;
  /** Every object under `dir` (relative paths, sorted). */
  list(dir: string): Promise<{ path: string; size: number }[]>;
  /** Streams a local file up (multipart with checksums on S3); readers never see a partial object. */
  putFile(path: string, localFile: string, onProgress?: (sentBytes: number) => void): Promise<void>;
  /**
   * Streams an object down to `localFile`. An earlier partial download at `${localFile}.part` is
   * resumed from where it stopped; the file appears at `localFile` only once complete. Resolves to
   * the file's sha256 (hex), hashed in file order while the ranges land (lib/ranged-download.ts).
   */
  getFile(
    path: string,
    localFile: string,
    onProgress?: (bytes: number, total: number) => void,
  ): Promise<string>;
  /** Bytes [start, end] of an object, for lib/ranged-download.ts. */
  openRange(path: string): RangeOpener;
}

/** getFile of either store: ranged, resumable, hashed while it lands (lib/ranged-download.ts). */
async function downloadObject(
  store: ObjectStore,
  path: string,
  localFile: string,
  onProgress?: (bytes: number, total: number) => void,
): Promise<string> {
  const total = await store.size(path);
  if (total === undefined) throw new Error(`${store.uri(path)}: no such object`);
  const part = `${localFile}.part`;
  await mkdir(dirname(localFile), { recursive: true });
  const sha256 = await downloadRanges(store.openRange(path), part, total, { onProgress, sha256: true });
  await rename(part, localFile);
  return sha256;
}

export interface ObjectStoreOptions {
  uri: string;
  /** S3 endpoint for non-AWS servers (path-style addressing is then used). */
  endpoint?: string;
  region?: string;
  /** Explicit S3 credentials; when absent the SDK's default chain (AWS_* env, profile, IMDS) applies. */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
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

const MIB = 1024 * 1024;
const PART_BYTES = 16 * MIB;
/** Parts of a multipart upload in flight at once (each buffered: 8 × 16 MiB by default). */
const UPLOAD_CONCURRENCY = 8;

/**
 * The part size of a multipart upload of `size` bytes: 16 MiB, or more where S3's limit of 10,000
 * parts would not hold the object (from about 156 GiB: a 405B-parameter fp8 engine is ~400 GB).
 */
export function uploadPartBytes(size: number): number {
  return Math.max(PART_BYTES, Math.ceil(size / 9_500 / MIB) * MIB);
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
    const tmp = tempSibling(target);
    await writeFile(tmp, body);
    await rename(tmp, target);
  }

  async size(path: string): Promise<number | undefined> {
    try {
      return (await stat(join(this.root, path))).size;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
  }

  async list(dir: string): Promise<{ path: string; size: number }[]> {
    const base = join(this.root, dir);
    let entries: string[];
    try {
      entries = (await readdir(base, { recursive: true })) as string[];
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw err;
    }
    const out: { path: string; size: number }[] = [];
    for (const entry of entries) {
      const s = await stat(join(base, entry));
      if (s.isFile()) out.push({ path: relative(this.root, join(base, entry)), size: s.size });
    }
    return out.sort((a, b) => a.path.localeCompare(b.path));
  }

  async putFile(path: string, localFile: string, onProgress?: (sentBytes: number) => void): Promise<void> {
    const target = join(this.root, path);
    await mkdir(dirname(target), { recursive: true });
    const tmp = tempSibling(target);
    await copyFile(localFile, tmp);
    await rename(tmp, target);
    onProgress?.((await stat(target)).size);
  }

  getFile(
    path: string,
    localFile: string,
    onProgress?: (bytes: number, total: number) => void,
  ): Promise<string> {
    return downloadObject(this, path, localFile, onProgress);
  }

  openRange(path: string): RangeOpener {
    const source = join(this.root, path);
    return async (start, end) => createReadStream(source, { start, end });
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
      ...(opts.credentials ? { credentials: opts.credentials } : {}),
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
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  async put(path: string, body: Buffer | string): Promise<void> {
    await this.client.send(
      new PutObjectCommand({
        Bucket: this.bucket,
        Key: this.key(path),
        Body: body,
        ChecksumAlgorithm: ChecksumAlgorithm.SHA256,
      }),
    );
  }

  async size(path: string): Promise<number | undefined> {
    try {
      const out = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.key(path) }));
      return out.ContentLength;
    } catch (err) {
      if (isNotFound(err)) return undefined;
      throw err;
    }
  }

  async list(dir: string): Promise<{ path: string; size: number }[]> {
    const prefix = `${this.key(dir).replace(/\/+$/, "")}/`;
    const out: { path: string; size: number }[] = [];
    let token: string | undefined;
    do {
      const page = await this.client.send(
        new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, ContinuationToken: token }),
      );
      for (const o of page.Contents ?? []) {
        if (!o.Key) continue;
        out.push({ path: this.prefix ? o.Key.slice(this.prefix.length + 1) : o.Key, size: o.Size ?? 0 });
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return out.sort((a, b) => a.path.localeCompare(b.path));
  }

  async putFile(path: string, localFile: string, onProgress?: (sentBytes: number) => void): Promise<void> {
    // Multipart with a SHA-256 per part: the server rejects a corrupted part, and an aborted
    // upload leaves no object behind (only a multipart upload that lib-storage aborts).
    const upload = new Upload({
      client: this.client,
      params: {
        Bucket: this.bucket,
        Key: this.key(path),
        Body: createReadStream(localFile),
        ChecksumAlgorithm: ChecksumAlgorithm.SHA256,
      },
      partSize: uploadPartBytes((await stat(localFile)).size),
      queueSize: UPLOAD_CONCURRENCY,
      leavePartsOnError: false,
    });
    if (onProgress) upload.on("httpUploadProgress", (p) => onProgress(p.loaded ?? 0));
    await upload.done();
  }

  getFile(
    path: string,
    localFile: string,
    onProgress?: (bytes: number, total: number) => void,
  ): Promise<string> {
    return downloadObject(this, path, localFile, onProgress);
  }

  openRange(path: string): RangeOpener {
    return async (start, end) => {
      const out = await this.client.send(
        new GetObjectCommand({ Bucket: this.bucket, Key: this.key(path), Range: `bytes=${start}-${end}` }),
      );
      if (!out.Body) throw new Error(`${this.uri(path)}: empty response body`);
      return out.Body as Readable;
    };
  }
}

// Unique per writer, not per process: builders in containers are all pid 1, and two of them may
// publish the same engine into one shared (NFS, hostPath) store at once.
function tempSibling(target: string): string {
  return `${target}.tmp-${randomUUID()}`;
}

function isNotFound(err: unknown): boolean {
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  return e.name === "NoSuchKey" || e.name === "NotFound" || e.$metadata?.httpStatusCode === 404;
}
