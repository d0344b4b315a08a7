import { randomBytes } from "node:crypto";
import {
  linkSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readlinkSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { dirname } from "node:path";
import { ConfigError, MIN_SECRET_LENGTH, type RelayConfig } from "../config.ts";

export interface ResolvedSecret {
  secret: string | undefined;
  /** Set when the secret was read from or written to the development secret file. */
  file?: string;
  /** True when this call created the secret file. */
  generated?: boolean;
  /** Permission bits of the secret file when its group or others may read it. */
  exposedMode?: number;
}

/** A development secret file that exists but cannot be used. */
export class SecretFileError extends ConfigError {
  override name = "SecretFileError";

  constructor(
    message: string,
    readonly file: string,
  ) {
    super(message);
  }
}

/**
 * Returns the HS256 secret: `AUTH_SECRET` when set. Outside production,
 * with neither a secret nor a public key configured, reads the secret file,
 * creating it with a random secret (mode 0600) when it does not exist, so
 * the relay and the token tool agree without a secret in the repository.
 * Throws a SecretFileError when the file exists but cannot be read or
 * contains no valid secret. An existing file is never replaced.
 */
export function resolveSecret(config: RelayConfig): ResolvedSecret {
  const { secret, publicKeyPem, secretFile } = config.auth;
  if (secret !== undefined) return { secret };
  if (config.production || publicKeyPem !== undefined)
    return { secret: undefined };
  const stored = readSecretFile(secretFile);
  if (stored !== undefined) return stored;
  const created = randomBytes(32).toString("base64url");
  if (createSecretFile(secretFile, created)) {
    return { secret: created, file: secretFile, generated: true };
  }
  // Another process (a relay or the token tool) created the file meanwhile.
  const raced = readSecretFile(secretFile);
  if (raced !== undefined) return raced;
  const target = danglingLinkTarget(secretFile);
  if (target !== undefined) {
    throw new SecretFileError(
      `AUTH_SECRET_FILE ${secretFile} is a symbolic link to ${target}, which does not exist; create ${target} with the secret, or remove the link so that a new file is created`,
      secretFile,
    );
  }
  throw new SecretFileError(
    `AUTH_SECRET_FILE ${secretFile} was deleted by another process while this one created it; run again`,
    secretFile,
  );
}

/**
 * Returns a warning about the secret file in `resolved` when its group or
 * others may read it, or undefined when there is nothing to warn about.
 */
export function secretFileWarning(
  resolved: ResolvedSecret,
): string | undefined {
  if (resolved.file === undefined || resolved.exposedMode === undefined)
    return undefined;
  const mode = formatMode(resolved.exposedMode);
  return `AUTH_SECRET_FILE ${resolved.file} can be read by its group or others (mode ${mode}); run chmod 600 ${resolved.file}`;
}

/** Formats permission bits as four octal digits, as chmod takes them. */
export function formatMode(mode: number): string {
  return mode.toString(8).padStart(4, "0");
}

/**
 * Reads the secret in `file`. Returns undefined when the file does not
 * exist, and throws a SecretFileError when it cannot be read or its
 * secret is shorter than AUTH_SECRET may be.
 */
function readSecretFile(file: string): ResolvedSecret | undefined {
  let stored: string;
  let mode: number;
  try {
    stored = readFileSync(file, "utf8").trim();
    mode = statSync(file).mode & 0o777;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === "ENOENT") return undefined;
    throw new SecretFileError(
      `AUTH_SECRET_FILE ${file} could not be read (${code ?? (error as Error).message}); ` +
        "make it a readable file that contains the secret, or delete it so that a new one is created",
      file,
    );
  }
  if (stored.length < MIN_SECRET_LENGTH) {
    const content =
      stored.length === 0
        ? "is empty"
        : `contains a secret of ${stored.length} characters, too short`;
    throw new SecretFileError(
      `AUTH_SECRET_FILE ${file} ${content}: the secret must be at least ${MIN_SECRET_LENGTH} characters; ` +
        "put a longer secret in it, or delete it so that a new one is created",
      file,
    );
  }
  const resolved: ResolvedSecret = { secret: stored, file };
  // Node on Windows reports mode 0666 or 0444 for every file, whatever its ACL.
  if (process.platform !== "win32" && (mode & 0o077) !== 0) {
    resolved.exposedMode = mode;
  }
  return resolved;
}

/** Returns the target of `file` when it is a symbolic link, or undefined. */
function danglingLinkTarget(file: string): string | undefined {
  try {
    return lstatSync(file).isSymbolicLink() ? readlinkSync(file) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Creates `file` (mode 0600) that contains `secret`, and returns false
 * when the file exists already. The secret is written to a temporary file
 * that is then linked in place: a link never replaces an existing file,
 * and a process that reads the file meanwhile never reads it half written.
 */
function createSecretFile(file: string, secret: string): boolean {
  const temporary = `${file}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`;
  try {
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(temporary, `${secret}\n`, { mode: 0o600, flag: "wx" });
  } catch (error) {
    throw new SecretFileError(
      `AUTH_SECRET_FILE ${file} could not be created (${(error as Error).message}); ` +
        "make its directory writable, or set AUTH_SECRET",
      file,
    );
  }
  try {
    linkSync(temporary, file);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw new SecretFileError(
      `AUTH_SECRET_FILE ${file} could not be created (${(error as Error).message}); ` +
        "make its directory writable, or set AUTH_SECRET",
      file,
    );
  } finally {
    unlinkSync(temporary);
  }
}
