import type { Request } from "express";
import type { AppIdentity } from "../auth/identity.ts";
import type { TokenVerifier } from "../auth/verify.ts";
import { RelayError } from "../errors.ts";

const BEARER = /^Bearer +(\S+) *$/i;

/**
 * Verifies the app token in `Authorization: Bearer <token>` with the same
 * verifier as the Socket.IO handshake. Throws `UNAUTHORIZED` when the
 * header is missing, is not a Bearer credential, or the token is invalid,
 * and `FORBIDDEN` for a valid token of another role than `app`.
 */
export async function authenticateApp(
  request: Request,
  verifier: TokenVerifier,
): Promise<AppIdentity> {
  const header = request.get("authorization");
  if (header === undefined || header.trim() === "") {
    throw new RelayError(
      "UNAUTHORIZED",
      "missing Authorization header: send the app token as a Bearer credential",
    );
  }
  const token = BEARER.exec(header)?.[1];
  if (token === undefined) {
    throw new RelayError(
      "UNAUTHORIZED",
      "Authorization header is not a Bearer token",
    );
  }
  const identity = await verifier.verify(token);
  if (identity.role !== "app") {
    throw new RelayError(
      "FORBIDDEN",
      `a ${identity.role} token cannot call the HTTP API, use an app token`,
    );
  }
  return identity;
}
