import { randomBytes } from "node:crypto";
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import type { RelayConfig } from "../config.ts";

export interface ResolvedSecret {
  secret: string | undefined;
  /** Set when the secret was read from or written to the development secret file. */
  file?: string;
  generated?: boolean;
}

/**
 * Returns the HS256 secret: `AUTH_SECRET` when set. Outside production,
 * with neither a secret nor a public key configured, reads the secret file,
 * creating it with a random secret (mode 0600) on first use, so the relay
 * and the token tool agree without a secret in the repository.
 */
export function resolveSecret(config: RelayConfig): ResolvedSecret {
  const { secret, publicKeyPem, secretFile } = config.auth;
  if (secret !== undefined) return { secret };
  if (config.production || publicKeyPem !== undefined)
    return { secret: undefined };
  try {
    const stored = readFileSync(secretFile, "utf8").trim();
    if (stored.length >= 32) return { secret: stored, file: secretFile };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
  }
  const created = randomBytes(32).toString("base64url");
  mkdirSync(dirname(secretFile), { recursive: true });
  writeFileSync(secretFile, `${created}\n`, { mode: 0o600 });
  // The mode above applies only when the file is created, not when an old one is overwritten.
  chmodSync(secretFile, 0o600);
  return { secret: created, file: secretFile, generated: true };
}
