import { execFile } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

// Certificates come from the openssl CLI (3.x, present on every machine image we use): Node's crypto
// makes keys but cannot issue X.509 certificates, and one CLI call per certificate is faster and
// smaller than pulling an ASN.1 library into the test tooling. Keys are ECDSA P-256; everything is
// valid for two days, which outlives any test run and limits what a leaked test CA is worth.
const validDays = "2";
const ecKey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-noenc", "-config", "/dev/null"];

export interface CertPair {
  cert: string;
  key: string;
}

export interface ClusterPki {
  ca: CertPair;
  /**
   * A second CA for the aggregation layer: the apiserver trusts requests carrying X-Remote-User
   * headers only from its client certificate, so it must not be the CA every client cert comes from.
   */
  frontProxyCa: CertPair;
  frontProxyClient: CertPair;
  apiserver: CertPair;
  /** Serving certificate of the other loopback components (controller manager, scheduler, kwok). */
  loopbackServing: CertPair;
  admin: CertPair;
  controllerManager: CertPair;
  scheduler: CertPair;
  kwok: CertPair;
  /** Service-account token signing key (private) and its public half for verification. */
  serviceAccount: { privateKey: string; publicKey: string };
}

async function openssl(args: string[], what: string): Promise<void> {
  try {
    await run("openssl", args);
  } catch (err) {
    throw new Error(`openssl failed to create ${what}: ${(err as Error).message}`);
  }
}

async function issue(
  dir: string,
  name: string,
  ca: CertPair,
  subject: string,
  usage: "client" | "server",
  altNames: string[] = [],
): Promise<CertPair> {
  const pair = { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) };
  const extensions = [
    "basicConstraints=critical,CA:FALSE",
    "keyUsage=critical,digitalSignature",
    `extendedKeyUsage=${usage === "server" ? "serverAuth" : "clientAuth"}`,
    ...(altNames.length > 0 ? [`subjectAltName=${altNames.join(",")}`] : []),
  ];
  await openssl(
    [
      "req",
      "-x509",
      "-new",
      ...ecKey,
      "-CA",
      ca.cert,
      "-CAkey",
      ca.key,
      "-days",
      validDays,
      "-subj",
      subject,
      "-keyout",
      pair.key,
      "-out",
      pair.cert,
      ...extensions.flatMap((ext) => ["-addext", ext]),
    ],
    `the ${name} certificate`,
  );
  return pair;
}

async function createCa(dir: string, name: string, subject: string): Promise<CertPair> {
  const ca = { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) };
  await openssl(
    [
      "req",
      "-x509",
      "-new",
      ...ecKey,
      "-days",
      validDays,
      "-subj",
      subject,
      "-keyout",
      ca.key,
      "-out",
      ca.cert,
      "-addext",
      "basicConstraints=critical,CA:TRUE",
      "-addext",
      "keyUsage=critical,keyCertSign,cRLSign",
    ],
    `the ${name} certificate`,
  );
  return ca;
}

/** Creates fresh CAs, the apiserver serving certificate, one client certificate per component and the SA keys. */
export async function createClusterPki(dir: string): Promise<ClusterPki> {
  const [ca, frontProxyCa] = await Promise.all([
    createCa(dir, "ca", "/CN=kiln-test-ca"),
    createCa(dir, "front-proxy-ca", "/CN=kiln-test-front-proxy-ca"),
  ]);

  const serviceAccount = { privateKey: join(dir, "sa.key"), publicKey: join(dir, "sa.pub") };
  const saKeys = generateKeyPairSync("ec", {
    namedCurve: "prime256v1",
    privateKeyEncoding: { type: "pkcs8", format: "pem" },
    publicKeyEncoding: { type: "spki", format: "pem" },
  });

  const [apiserver, loopbackServing, admin, controllerManager, scheduler, kwok, frontProxyClient] =
    await Promise.all([
      issue(dir, "apiserver", ca, "/CN=kube-apiserver", "server", [
        "IP:127.0.0.1",
        "DNS:localhost",
        "DNS:kubernetes",
        "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc",
      ]),
      issue(dir, "loopback-serving", ca, "/CN=kiln-loopback", "server", ["IP:127.0.0.1", "DNS:localhost"]),
      // system:masters bypasses RBAC: the test harness and humans act as cluster admins.
      issue(dir, "admin", ca, "/O=system:masters/CN=kiln-admin", "client"),
      // The bootstrap RBAC policy grants these well-known user names exactly what the components need.
      issue(dir, "controller-manager", ca, "/CN=system:kube-controller-manager", "client"),
      issue(dir, "scheduler", ca, "/CN=system:kube-scheduler", "client"),
      // kwok patches node and pod status of every node it manages, like a fleet of kubelets would.
      issue(dir, "kwok", ca, "/O=system:masters/CN=kwok", "client"),
      issue(dir, "front-proxy-client", frontProxyCa, "/CN=front-proxy-client", "client"),
      writeFile(serviceAccount.privateKey, saKeys.privateKey, { mode: 0o600 }),
      writeFile(serviceAccount.publicKey, saKeys.publicKey),
    ]);
  return {
    ca,
    frontProxyCa,
    frontProxyClient,
    apiserver,
    loopbackServing,
    admin,
    controllerManager,
    scheduler,
    kwok,
    serviceAccount,
  };
}
