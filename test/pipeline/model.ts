import { createHash } from "node:crypto";
import { readdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { PutObjectCommand, type S3Client } from "@aws-sdk/client-s3";
import { parse } from "yaml";
import {
  TINY_CHAT_TEMPLATE,
  TINY_VOCAB_SIZE,
  tinyTokenizerJson,
} from "../../runtime-image/test/fixtures/tokenizer.js";
import { writeTinyLlama } from "../fixtures/tiny-checkpoint.js";
import { repoRoot } from "../pod-runner/images.js";

// The model the pipeline tier and the demo serve: a tiny random Llama with a real byte-level BPE
// tokenizer and a chat template, so text goes in and text comes out. No registry package ships
// weights small enough to build and serve on a 2-core machine in seconds, so the repo makes one.

/** Claim and path under the pod runner's claims folder: the model's source is pvc://<claim>/<path>. */
export const TINY_MODEL_CLAIM = "models";
export const TINY_MODEL_PATH = "tiny-llama";
export const TINY_MODEL_SOURCE = `pvc://${TINY_MODEL_CLAIM}/${TINY_MODEL_PATH}`;

/** Writes config.json, model.safetensors, tokenizer.json and tokenizer_config.json. */
export async function writeTinyModel(claimsDir: string): Promise<string> {
  const dir = join(claimsDir, TINY_MODEL_CLAIM, TINY_MODEL_PATH);
  await writeTinyLlama(dir, { vocab: TINY_VOCAB_SIZE });
  await writeFile(join(dir, "tokenizer.json"), tinyTokenizerJson());
  await writeFile(
    join(dir, "tokenizer_config.json"),
    JSON.stringify({ bos_token: "<s>", eos_token: "</s>", chat_template: TINY_CHAT_TEMPLATE }),
  );
  return dir;
}

/** examples/tiny-llama.yaml (what the demo applies), renamed into `namespace`. */
export async function tinyInferenceModel(name: string, namespace: string) {
  const doc = parse(await readFile(join(repoRoot, "examples/tiny-llama.yaml"), "utf8")) as {
    metadata: Record<string, unknown>;
    spec: { model: { source: string; credentialsSecret?: string }; gpu: { products: string[] } };
  };
  if (doc.spec.model.source !== TINY_MODEL_SOURCE) {
    throw new Error(`examples/tiny-llama.yaml must read ${TINY_MODEL_SOURCE}, which the fixture writes`);
  }
  return { ...doc, metadata: { ...doc.metadata, name, namespace } };
}

export interface UploadedFile {
  path: string;
  sha256: string;
}

/**
 * Uploads a checkpoint folder to `s3://<bucket>/<prefix>/` of the test S3 server, as a user would
 * stage a model, and returns what was uploaded with each file's sha256.
 */
export async function uploadModel(
  s3: S3Client,
  bucket: string,
  prefix: string,
  dir: string,
): Promise<UploadedFile[]> {
  const uploaded: UploadedFile[] = [];
  for (const name of (await readdir(dir)).sort()) {
    const body = await readFile(join(dir, name));
    await s3.send(new PutObjectCommand({ Bucket: bucket, Key: `${prefix}/${name}`, Body: body }));
    uploaded.push({ path: name, sha256: createHash("sha256").update(body).digest("hex") });
  }
  return uploaded;
}

/** The model's credentials Secret for an s3:// source: the AWS_* keys the build Job gets. */
export function s3CredentialsSecret(
  name: string,
  namespace: string,
  keys: { accessKeyId: string; secretAccessKey: string },
) {
  return {
    apiVersion: "v1",
    kind: "Secret",
    metadata: { name, namespace },
    stringData: { AWS_ACCESS_KEY_ID: keys.accessKeyId, AWS_SECRET_ACCESS_KEY: keys.secretAccessKey },
  };
}
