import { createSecretKey, type KeyObject } from "node:crypto";
import { errors as joseErrors, jwtVerify, type JWTPayload } from "jose";
import { z } from "zod";
import {
  MAX_TOKEN_LENGTH,
  normalizeBridgeId,
} from "../../client-sdk/src/protocol.ts";
import { RelayError } from "../errors.ts";
import type { Identity } from "./identity.ts";
import { parsePublicKey } from "./public-key.ts";

/** Clock leeway for `exp`, `nbf` and `iat`, in seconds. */
export const CLOCK_TOLERANCE_SECONDS = 60;
// The maximum token length keeps a huge `bridges` claim from exhausting memory.
export { MAX_TOKEN_LENGTH };

export interface VerifierOptions {
  /** HS256 shared secret. */
  secret: string | undefined;
  /** PEM public key (SPKI) for ES256 or RS256. */
  publicKeyPem: string | undefined;
  issuer: string | undefined;
  audience: string | undefined;
}

const bridgeIdClaim = z.string().transform((value, context) => {
  const id = normalizeBridgeId(value);
  if (id === null) {
    context.addIssue({ code: "custom", message: "not a bridge ID" });
    return z.NEVER;
  }
  return id;
});

const claimsSchema = z.discriminatedUnion("role", [
  z.object({ role: z.literal("bridge"), sub: bridgeIdClaim }),
  z.object({
    role: z.literal("app"),
    sub: z.string().min(1).max(256),
    bridges: z.array(bridgeIdClaim).optional(),
    scope: z.string().max(1024).optional(),
  }),
]);

interface KeyChoice {
  key: KeyObject;
  algorithm: "HS256" | "ES256" | "RS256";
}

/**
 * Verifies relay JWTs and turns their claims into an Identity. Each
 * configured key verifies only its own algorithm, so an HS256 token can
 * never be checked against the public key, and `alg: none` always fails.
 */
export class TokenVerifier {
  private readonly keys: KeyChoice[] = [];
  private readonly issuer: string | undefined;
  private readonly audience: string | undefined;

  constructor(options: VerifierOptions) {
    if (options.secret !== undefined) {
      this.keys.push({
        key: createSecretKey(Buffer.from(options.secret, "utf8")),
        algorithm: "HS256",
      });
    }
    if (options.publicKeyPem !== undefined) {
      this.keys.push(parsePublicKey(options.publicKeyPem));
    }
    if (this.keys.length === 0) {
      throw new Error("a token verifier needs AUTH_SECRET or AUTH_PUBLIC_KEY");
    }
    this.issuer = options.issuer;
    this.audience = options.audience;
  }

  /** Verifies `token`, or throws an `UNAUTHORIZED` RelayError saying why. */
  async verify(token: unknown): Promise<Identity> {
    if (token === undefined || token === null || token === "") {
      throw new RelayError("UNAUTHORIZED", "missing token");
    }
    if (typeof token !== "string") {
      throw new RelayError("UNAUTHORIZED", "malformed token: must be a string");
    }
    if (token.length > MAX_TOKEN_LENGTH) {
      throw new RelayError("UNAUTHORIZED", "token is too long");
    }
    const payload = await this.verifySignature(token);
    return this.toIdentity(payload);
  }

  private async verifySignature(token: string): Promise<JWTPayload> {
    try {
      const { payload } = await jwtVerify(
        token,
        (header) => this.keyFor(header.alg),
        {
          algorithms: this.keys.map((choice) => choice.algorithm),
          issuer: this.issuer,
          audience: this.audience,
          clockTolerance: CLOCK_TOLERANCE_SECONDS,
        },
      );
      rejectFutureIssue(payload);
      return payload;
    } catch (error) {
      throw new RelayError("UNAUTHORIZED", describeJoseError(error));
    }
  }

  private keyFor(algorithm: string | undefined): KeyObject {
    const choice = this.keys.find(
      (candidate) => candidate.algorithm === algorithm,
    );
    if (choice === undefined) {
      throw new joseErrors.JOSEAlgNotAllowed(
        `algorithm ${algorithm} is not allowed`,
      );
    }
    return choice.key;
  }

  private toIdentity(payload: JWTPayload): Identity {
    const claims = claimsSchema.safeParse(payload);
    if (!claims.success) {
      const field = claims.error.issues[0]?.path.join(".") || "role";
      throw new RelayError("UNAUTHORIZED", `invalid token claim ${field}`);
    }
    const exp = typeof payload.exp === "number" ? payload.exp : undefined;
    if (claims.data.role === "bridge") {
      return { role: "bridge", bridgeId: claims.data.sub, exp };
    }
    const scopes = (claims.data.scope ?? "").split(" ").filter(Boolean);
    return {
      role: "app",
      userId: claims.data.sub,
      bridges: new Set(claims.data.bridges ?? []),
      scopes: new Set(scopes),
      exp,
    };
  }
}

/**
 * Rejects a token issued more than the clock leeway in the future. jose
 * checks `iat` against the clock only with a maximum token age, which
 * would make `iat` required.
 */
function rejectFutureIssue(payload: JWTPayload): void {
  const nowSeconds = Date.now() / 1000;
  if (payload.iat === undefined) return;
  if (payload.iat <= nowSeconds + CLOCK_TOLERANCE_SECONDS) return;
  throw new joseErrors.JWTClaimValidationFailed(
    "token issued in the future",
    payload,
    "iat",
    "check_failed",
  );
}

function describeJoseError(error: unknown): string {
  if (error instanceof joseErrors.JWTExpired) return "token has expired";
  if (error instanceof joseErrors.JWTClaimValidationFailed) {
    return `invalid token claim ${error.claim}`;
  }
  if (error instanceof joseErrors.JWSSignatureVerificationFailed) {
    return "invalid token signature";
  }
  if (error instanceof joseErrors.JOSEAlgNotAllowed) {
    return "token algorithm is not allowed";
  }
  return "malformed token";
}
