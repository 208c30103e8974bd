import { readFile, writeFile } from "node:fs/promises";
import type { CertPair } from "./pki.js";

const base64 = async (path: string) => (await readFile(path)).toString("base64");

/**
 * Writes a kubeconfig for one user of the test cluster. Certificates are embedded rather than
 * referenced so the file stays valid when copied or read from another working directory.
 */
export async function writeKubeconfig(
  path: string,
  server: string,
  caCert: string,
  user: CertPair,
): Promise<void> {
  // JSON is valid YAML, and every kubeconfig reader (kubectl, client-go, client-node) accepts it.
  const config = {
    apiVersion: "v1",
    kind: "Config",
    clusters: [{ name: "kiln", cluster: { server, "certificate-authority-data": await base64(caCert) } }],
    users: [
      {
        name: "kiln",
        user: {
          "client-certificate-data": await base64(user.cert),
          "client-key-data": await base64(user.key),
        },
      },
    ],
    contexts: [{ name: "kiln", context: { cluster: "kiln", user: "kiln", namespace: "default" } }],
    "current-context": "kiln",
  };
  await writeFile(path, `${JSON.stringify(config, null, 2)}\n`, { mode: 0o600 });
}
