import { SignJWT } from "jose";
import { TEST_SECRET } from "./relay-process.ts";

const key = new TextEncoder().encode(TEST_SECRET);

export interface TokenOptions {
  secret?: string;
  /** Seconds since the epoch. */
  exp?: number;
  issuer?: string;
  audience?: string;
}

/** Signs arbitrary claims with HS256, for tests that need odd tokens. */
export async function signClaims(
  claims: Record<string, unknown>,
  options: TokenOptions = {},
): Promise<string> {
  const jwt = new SignJWT(claims)
    .setProtectedHeader({ alg: "HS256" })
    .setIssuedAt();
  if (options.exp !== undefined) jwt.setExpirationTime(options.exp);
  if (options.issuer !== undefined) jwt.setIssuer(options.issuer);
  if (options.audience !== undefined) jwt.setAudience(options.audience);
  const secret =
    options.secret === undefined
      ? key
      : new TextEncoder().encode(options.secret);
  return jwt.sign(secret);
}

export function bridgeToken(
  bridgeId: string,
  options: TokenOptions = {},
): Promise<string> {
  return signClaims({ sub: bridgeId, role: "bridge" }, options);
}

export function appToken(
  userId: string,
  bridges: string[],
  scope = "read control",
  options: TokenOptions = {},
): Promise<string> {
  return signClaims({ sub: userId, role: "app", bridges, scope }, options);
}
