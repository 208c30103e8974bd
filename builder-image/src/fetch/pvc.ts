import { existsSync } from "node:fs";
import { readdir } from "node:fs/promises";
import { join, resolve } from "node:path";
import { PermanentError } from "../errors.js";
import { describeFiles, type FetchedModel, isModelFile } from "./model-files.js";

/**
 * pvc://claim/path reads the checkpoint in place from the claim's mount. The build Job mounts each
 * claim at <root>/<claim>; KILN_PVC_ROOT moves the root (the local pod runner maps it to a folder).
 */
export async function fetchFromPvc(
  source: string,
  root: string,
  revision: string | undefined,
): Promise<FetchedModel> {
  const match = /^pvc:\/\/([^/]+)\/(.+)$/.exec(source);
  if (!match?.[1] || !match[2])
    throw new PermanentError(`model.source ${source}: expected pvc://<claim>/<path>`);
  const claimRoot = resolve(root, match[1]);
  const dir = resolve(claimRoot, match[2]);
  if (!dir.startsWith(`${claimRoot}/`)) {
    throw new PermanentError(`model.source ${source}: the path must stay inside the claim`);
  }
  if (!existsSync(join(dir, "config.json"))) {
    throw new PermanentError(
      `model.source ${source}: no config.json in ${dir} (is the claim mounted at ${claimRoot}?)`,
    );
  }
  const names = (await readdir(dir)).filter(isModelFile);
  return { dir, revision: revision ?? "unversioned", files: await describeFiles(dir, names) };
}
