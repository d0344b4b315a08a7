import { SignJWT } from "jose";
import { normalizeBridgeId } from "../../client-sdk/src/protocol.ts";

/**
 * Signs relay JWTs with the HS256 shared secret, for the token tool, the
 * bridge simulator and tests. Production deployments may instead issue
 * tokens elsewhere and configure the relay with a public key.
 */

/** Scopes an app token may grant: `read` (list, subscribe, get) and `control` (commands). */
export const APP_SCOPES = ["read", "control"] as const;
export type AppScope = (typeof APP_SCOPES)[number];

/** Maximum length of the user ID in an app token's `sub`, as the relay accepts it. */
const MAX_USER_ID_LENGTH = 256;

/** Claims that the relay checks when it is configured with them. */
export interface TokenIssuerOptions {
  /** `iss` claim; set it when the relay has `AUTH_ISSUER`. */
  issuer?: string | undefined;
  /** `aud` claim; set it when the relay has `AUTH_AUDIENCE`. */
  audience?: string | undefined;
}

export interface BridgeTokenOptions extends TokenIssuerOptions {
  /**
   * Lifetime from now, in jose's time-span format such as `90s`, `15m`, `1h`
   * or `30d`. Without it the token has no `exp`.
   */
  expiresIn?: string | undefined;
}

/** Grants of an app token. */
export interface AppTokenGrants {
  /** Bridge IDs (16 hexadecimal digits each); stored lowercase. */
  bridges: string[];
  /** Space-separated scopes from APP_SCOPES, e.g. `"read control"`. */
  scope: string;
  /** Lifetime from now, as in BridgeTokenOptions. Without it the token has no `exp`. */
  expiresIn?: string | undefined;
}

/**
 * Signs a bridge token: `{ sub: bridgeId, role: "bridge" }`. Throws a
 * TypeError naming the value when `bridgeId` or `expiresIn` is invalid.
 *
 * @example
 * const token = await signBridgeToken(secret, "001788fffe4f3a2b", { expiresIn: "30d" });
 */
export async function signBridgeToken(
  secret: string,
  bridgeId: string,
  options: BridgeTokenOptions = {},
): Promise<string> {
  const id = normalizeBridgeId(bridgeId);
  if (id === null) {
    throw new TypeError(
      `invalid bridge ID ${JSON.stringify(bridgeId)}: expected 16 hexadecimal digits`,
    );
  }
  return sign(secret, id, { role: "bridge" }, options.expiresIn, options);
}

/**
 * Signs an app token: `{ sub: userId, role: "app", bridges, scope }`. Throws
 * a TypeError naming the value when the user ID, a bridge ID, a scope or
 * `expiresIn` is invalid.
 *
 * @example
 * const token = await signAppToken(secret, "alice", {
 *   bridges: ["001788fffe4f3a2b"],
 *   scope: "read control",
 *   expiresIn: "1h",
 * });
 */
export async function signAppToken(
  secret: string,
  userId: string,
  grants: AppTokenGrants,
  options: TokenIssuerOptions = {},
): Promise<string> {
  if (userId.length === 0 || userId.length > MAX_USER_ID_LENGTH) {
    throw new TypeError(
      `invalid user ID ${JSON.stringify(userId.slice(0, 40))}: must be 1-${MAX_USER_ID_LENGTH} characters`,
    );
  }
  const claims = {
    role: "app",
    bridges: normalizeBridgeIds(grants.bridges),
    scope: normalizeScope(grants.scope),
  };
  return sign(secret, userId, claims, grants.expiresIn, options);
}

/** Returns the bridge IDs lowercased and without repeats, or throws a TypeError. */
export function normalizeBridgeIds(bridgeIds: string[]): string[] {
  const ids = bridgeIds.map((value) => {
    const id = normalizeBridgeId(value);
    if (id === null) {
      throw new TypeError(
        `invalid bridge ID ${JSON.stringify(value)}: expected 16 hexadecimal digits`,
      );
    }
    return id;
  });
  return [...new Set(ids)];
}

/** Returns the scope words deduplicated and space-separated, or throws a TypeError. */
export function normalizeScope(scope: string): string {
  const words = scope.split(/\s+/).filter((word) => word !== "");
  const unknown = words.find(
    (word) => !(APP_SCOPES as readonly string[]).includes(word),
  );
  if (unknown !== undefined) {
    throw new TypeError(
      `invalid scope ${JSON.stringify(unknown)}: expected ${APP_SCOPES.join(" and/or ")}`,
    );
  }
  if (words.length === 0) {
    throw new TypeError(
      `missing scope: expected ${APP_SCOPES.join(" and/or ")}`,
    );
  }
  return [...new Set(words)].join(" ");
}

async function sign(
  secret: string,
  subject: string,
  claims: Record<string, unknown>,
  expiresIn: string | undefined,
  options: TokenIssuerOptions,
): Promise<string> {
  if (secret.length === 0) throw new TypeError("missing signing secret");
  const jwt = new SignJWT(claims)
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setSubject(subject)
    .setIssuedAt();
  if (options.issuer !== undefined) jwt.setIssuer(options.issuer);
  if (options.audience !== undefined) jwt.setAudience(options.audience);
  if (expiresIn !== undefined) setExpiry(jwt, expiresIn);
  return jwt.sign(new TextEncoder().encode(secret));
}

function setExpiry(jwt: SignJWT, expiresIn: string): void {
  try {
    jwt.setExpirationTime(expiresIn);
  } catch {
    throw new TypeError(
      `invalid expiry ${JSON.stringify(expiresIn)}: use a number and a unit, such as 90s, 15m, 1h or 30d`,
    );
  }
}
