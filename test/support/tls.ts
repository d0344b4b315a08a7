import { execFile } from "node:child_process";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

/** A self-signed certificate for 127.0.0.1 and its key, as PEM files. */
export interface TestCertificate {
  certFile: string;
  keyFile: string;
}

/**
 * Writes a self-signed certificate valid for IP 127.0.0.1 into `dir`, with
 * `openssl` from PATH. A client trusts it as its own CA, as with
 * `NODE_EXTRA_CA_CERTS` for a relay.
 */
export async function writeTestCertificate(
  dir: string,
): Promise<TestCertificate> {
  const certFile = join(dir, "redis-cert.pem");
  const keyFile = join(dir, "redis-key.pem");
  await run("openssl", [
    "req",
    "-x509",
    "-newkey",
    "rsa:2048",
    "-nodes",
    "-keyout",
    keyFile,
    "-out",
    certFile,
    "-days",
    "1",
    "-subj",
    "/CN=127.0.0.1",
    "-addext",
    "subjectAltName=IP:127.0.0.1",
  ]);
  return { certFile, keyFile };
}

/** Returns the redis-server arguments that add a TLS listener on `tlsPort`. */
export function redisTlsArgs(
  certificate: TestCertificate,
  tlsPort: number,
): string[] {
  return [
    "--tls-port",
    String(tlsPort),
    "--tls-cert-file",
    certificate.certFile,
    "--tls-key-file",
    certificate.keyFile,
    "--tls-ca-cert-file",
    certificate.certFile,
    "--tls-auth-clients",
    "no",
  ];
}
