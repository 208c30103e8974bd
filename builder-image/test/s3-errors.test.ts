import { S3ServiceException } from "@aws-sdk/client-s3";
import { describe, expect, test } from "vitest";
import { isPermanentS3Error } from "../src/fetch/s3.js";

const s3Error = (name: string, httpStatusCode: number) =>
  new S3ServiceException({
    name,
    $fault: httpStatusCode < 500 ? "client" : "server",
    $metadata: { httpStatusCode },
  });

describe("S3 errors while fetching an s3:// checkpoint", () => {
  test.each([
    ["InvalidAccessKeyId", 403],
    ["SignatureDoesNotMatch", 403],
    ["AccessDenied", 403],
    ["ExpiredToken", 400],
    ["NoSuchBucket", 404],
    ["XAdminUserNotFound", 404],
    // A server that answers 403 with a code of its own is still refusing these credentials.
    ["Forbidden", 403],
  ])("%s (%i) is permanent: the build fails instead of retrying with the same Secret", (name, status) => {
    expect(isPermanentS3Error(s3Error(name, status))).toBe(true);
  });

  test.each([
    ["SlowDown", 503],
    ["InternalError", 500],
    ["RequestTimeout", 400],
  ])("%s (%i) is retryable", (name, status) => {
    expect(isPermanentS3Error(s3Error(name, status))).toBe(false);
  });

  test("a network error (no S3 answer at all) is retryable", () => {
    const refused = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:9"), { code: "ECONNREFUSED" });
    expect(isPermanentS3Error(refused)).toBe(false);
  });
});
