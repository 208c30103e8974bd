import { accessSync, constants, readFileSync } from "node:fs";
import { homedir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

// The pins live in the wrapper modules' go.mod files (test/cluster/go/<dir>/go.mod); `build` names
// each binary <name>-<version> after the upstream module version required there, and so do we.
const pins = {
  etcd: { dir: "etcd", module: "go.etcd.io/etcd/server/v3" },
  "kube-apiserver": { dir: "kubernetes", module: "k8s.io/kubernetes" },
  "kube-controller-manager": { dir: "kubernetes", module: "k8s.io/kubernetes" },
  "kube-scheduler": { dir: "kubernetes", module: "k8s.io/kubernetes" },
  kubectl: { dir: "kubernetes", module: "k8s.io/kubernetes" },
  kwok: { dir: "kwok", module: "sigs.k8s.io/kwok" },
  helm: { dir: "helm", module: "helm.sh/helm/v3" },
  versitygw: { dir: "versitygw", module: "github.com/versity/versitygw" },
} as const;

export type BinaryName = keyof typeof pins;

const goModulesDir = join(dirname(fileURLToPath(import.meta.url)), "go");

export function kilnCacheDir(): string {
  return process.env.KILN_CACHE ?? join(homedir(), ".cache", "kiln");
}

/** The upstream version a binary is pinned to, as required by its wrapper module's go.mod. */
export function pinnedVersion(name: BinaryName): string {
  const { dir, module } = pins[name];
  const goMod = join(goModulesDir, dir, "go.mod");
  const escaped = module.replace(/[.*+?^${}()|[\]\\/]/g, "\\$&");
  const match = readFileSync(goMod, "utf8").match(
    new RegExp(`^\\s*(?:require\\s+)?${escaped}\\s+(v\\S+)`, "m"),
  );
  if (!match?.[1])
    throw new Error(`${goMod} does not require ${module}; cannot tell which ${name} is pinned`);
  return match[1];
}

/** Absolute path of a pinned binary in the kiln cache; throws, naming the build command, when absent. */
export function binaryPath(name: BinaryName): string {
  const path = join(kilnCacheDir(), "bin", `${name}-${pinnedVersion(name)}`);
  try {
    accessSync(path, constants.X_OK);
  } catch {
    throw new Error(`${name} is not built at ${path}; run test/cluster/build first`);
  }
  return path;
}

export function pinnedVersions(): Record<BinaryName, string> {
  return Object.fromEntries(
    Object.keys(pins).map((name) => [name, pinnedVersion(name as BinaryName)]),
  ) as Record<BinaryName, string>;
}
