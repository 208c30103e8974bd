import { createHash, randomBytes } from "node:crypto";
import {
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  UploadPartCommand,
} from "@aws-sdk/client-s3";
import { afterAll, describe, expect, it } from "vitest";
import { testS3, testS3Client } from "./env.js";

const sha256 = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");
const prefix = `smoke-${process.pid}-${Date.now()}`;

describe("the S3 server of the test cluster", () => {
  const { bucket } = testS3();
  const s3 = testS3Client();
  afterAll(() => s3.destroy());

  const get = async (key: string) => {
    const res = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    if (!res.Body) throw new Error(`GET ${key} returned no body`);
    return res.Body.transformToByteArray();
  };

  it("puts, gets and lists objects byte for byte", async () => {
    const small = randomBytes(64 * 1024);
    const manifest = Buffer.from(JSON.stringify({ key: "abc", sizeBytes: small.length }));
    await s3.send(
      new PutObjectCommand({ Bucket: bucket, Key: `${prefix}/engines/abc/engine.kiln`, Body: small }),
    );
    await s3.send(
      new PutObjectCommand({
        Bucket: bucket,
        Key: `${prefix}/engines/abc/manifest.json`,
        Body: manifest,
        ContentType: "application/json",
        ChecksumAlgorithm: "SHA256",
      }),
    );

    expect(sha256(await get(`${prefix}/engines/abc/engine.kiln`))).toBe(sha256(small));
    expect(Buffer.from(await get(`${prefix}/engines/abc/manifest.json`)).toString()).toBe(
      manifest.toString(),
    );

    const listed = await s3.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: `${prefix}/engines/` }));
    expect(listed.Contents?.map((o) => [o.Key, o.Size])).toEqual([
      [`${prefix}/engines/abc/engine.kiln`, small.length],
      [`${prefix}/engines/abc/manifest.json`, manifest.length],
    ]);
  });

  it("assembles a checksummed multipart upload into the original bytes", async () => {
    const key = `${prefix}/engines/big/engine.kiln`;
    // S3 requires every part but the last to be at least 5 MiB.
    const parts = [randomBytes(5 * 1024 * 1024), randomBytes(5 * 1024 * 1024), randomBytes(1024 * 1024 + 17)];
    const { UploadId } = await s3.send(
      new CreateMultipartUploadCommand({ Bucket: bucket, Key: key, ChecksumAlgorithm: "SHA256" }),
    );
    expect(UploadId).toBeTruthy();

    const uploaded = await Promise.all(
      parts.map(async (body, i) => {
        const res = await s3.send(
          new UploadPartCommand({
            Bucket: bucket,
            Key: key,
            UploadId,
            PartNumber: i + 1,
            Body: body,
            ChecksumAlgorithm: "SHA256",
          }),
        );
        return { PartNumber: i + 1, ETag: res.ETag, ChecksumSHA256: res.ChecksumSHA256 };
      }),
    );
    expect(uploaded.every((p) => p.ChecksumSHA256)).toBe(true);
    await s3.send(
      new CompleteMultipartUploadCommand({
        Bucket: bucket,
        Key: key,
        UploadId,
        MultipartUpload: { Parts: uploaded },
      }),
    );

    const whole = Buffer.concat(parts);
    const downloaded = await get(key);
    expect(downloaded.length).toBe(whole.length);
    expect(sha256(downloaded)).toBe(sha256(whole));
  });
});
