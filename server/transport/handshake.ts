import type { Socket } from "socket.io";
import type {
  HandshakeErrorCode,
  HandshakeErrorData,
} from "../../client-sdk/src/protocol.ts";
import { identityKey, type Identity } from "../auth/identity.ts";
import {
  CLOCK_TOLERANCE_SECONDS,
  MAX_TOKEN_LENGTH,
  type TokenVerifier,
} from "../auth/verify.ts";
import { RelayError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import { handshakes } from "../metrics/relay-metrics.ts";
import { oversizedConnectLength } from "./json-only-parser.ts";
import type { RateLimits } from "./rate-limits.ts";
import { RepeatLimiter } from "../logging/repeat-limiter.ts";

export interface HandshakeDeps {
  verifier: TokenVerifier;
  limits: RateLimits;
  logger: Logger;
  /** True while the process drains before exit: new connections get `UNAVAILABLE`. */
  isDraining: () => boolean;
}

const HANDSHAKE_CODES = new Set<string>([
  "UNAUTHORIZED",
  "FORBIDDEN",
  "RATE_LIMITED",
  "UNAVAILABLE",
]);

/** Error passed to `next()`: Socket.IO sends `message` and `data` to the client's `connect_error`. */
export class HandshakeError extends Error {
  constructor(
    message: string,
    readonly data: HandshakeErrorData,
  ) {
    super(message);
  }
}

/** Converts any failure into the error a rejected handshake reports to the client. */
export function toHandshakeError(error: unknown): HandshakeError {
  if (error instanceof RelayError && HANDSHAKE_CODES.has(error.code)) {
    const data: HandshakeErrorData = { code: error.code as HandshakeErrorCode };
    if (error.retryAfterMs !== undefined)
      data.retryAfterMs = error.retryAfterMs;
    return new HandshakeError(error.message, data);
  }
  return new HandshakeError("the relay cannot serve now, retry later", {
    code: "UNAVAILABLE",
  });
}

/** Returns the identity a handshake middleware stored on the socket. */
export function socketIdentity<R extends Identity["role"]>(
  socket: Socket,
  role: R,
): Extract<Identity, { role: R }> {
  const identity = (socket.data as { identity?: Identity }).identity;
  if (identity?.role !== role)
    throw new Error(`socket ${socket.id} has no ${role} identity`);
  return identity as Extract<Identity, { role: R }>;
}

/**
 * Lets go of what an admitted socket no longer needs. The token then stays
 * in memory only as the verified identity. Engine.IO's reference to the
 * HTTP request that opened the connection would keep its raw headers and
 * parser state for the connection's life (see also upgrade-requests.ts).
 * The parsed headers go too, since nothing reads them after the
 * handshake. They took 264 bytes per connection of the Node.js client in
 * a measurement, and a browser sends more. `socket.handshake` keeps the
 * URL, query and address.
 */
function dropHandshakeReferences(socket: Socket): void {
  socket.handshake.auth = {};
  socket.handshake.headers = {};
  (socket.conn as { request?: unknown }).request = undefined;
}

/**
 * Rejects, with `UNAUTHORIZED` as for any token over `MAX_TOKEN_LENGTH`,
 * the auth the parser put in place of a CONNECT packet it did not decode
 * because it was over `MAX_CONNECT_PACKET_LENGTH`.
 */
function rejectOversizedConnect(auth: unknown): void {
  const length = oversizedConnectLength(auth);
  if (length === undefined) return;
  throw new RelayError(
    "UNAUTHORIZED",
    `token is too long: the handshake packet has ${length} characters, and a token may have at most ${MAX_TOKEN_LENGTH}`,
  );
}

/** Rate of the "handshake rejected" log line, per namespace and code. */
const rejectionLog = new RepeatLimiter(1000);

/**
 * Socket.IO middleware admitting only verified tokens of `role`. Checks, in
 * order: draining, this process's handshake rate, the per-address limit,
 * the token, the role, and the per-identity limit. The process's rate comes
 * first because it is counted in memory, so in a reconnect storm the
 * handshakes beyond it cost no token check and no Redis call.
 */
export function handshakeMiddleware(
  role: Identity["role"],
  deps: HandshakeDeps,
) {
  return async (
    socket: Socket,
    next: (error?: Error) => void,
  ): Promise<void> => {
    const address = socket.handshake.address;
    try {
      if (deps.isDraining()) {
        throw new RelayError(
          "UNAVAILABLE",
          "the relay is shutting down, connect again",
        );
      }
      deps.limits.rejectBlockedAddress(address);
      deps.limits.admitHandshakeOnProcess();
      await deps.limits.consumeHandshakeFromAddress(address);
      rejectOversizedConnect(socket.handshake.auth);
      const auth = socket.handshake.auth as { token?: unknown } | undefined;
      const identity = await deps.verifier.verify(auth?.token);
      if (identity.role !== role) {
        throw new RelayError(
          "FORBIDDEN",
          `${identity.role === "app" ? "an app" : "a bridge"} token cannot connect to /${role}`,
        );
      }
      await deps.limits.consumeHandshakeOfIdentity(identityKey(identity));
      socket.data = { identity };
      dropHandshakeReferences(socket);
      handshakes.inc({ namespace: role, outcome: "accepted" });
      next();
    } catch (error) {
      const rejection = toHandshakeError(error);
      handshakes.inc({ namespace: role, outcome: rejection.data.code });
      const expected = error instanceof RelayError;
      // Expected rejections are logged once per second per namespace and
      // code, with the count of those left out; unexpected errors always.
      const suppressed = expected
        ? rejectionLog.admit(`${role}:${rejection.data.code}`)
        : 0;
      if (suppressed !== null) {
        deps.logger[expected ? "info" : "error"](
          {
            err: expected ? undefined : error,
            address,
            socketId: socket.id,
            code: rejection.data.code,
            namespace: role,
            suppressed,
          },
          `handshake rejected: ${rejection.message}`,
        );
      }
      next(rejection);
    }
  };
}

/** Maximum delay setTimeout accepts, in ms. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Expiry timers by socket. They live beside `socket.data`, not in it, so
 * that `socket.data` stays plain data that the Redis adapter can send to
 * another process, as `fetchSockets()` does.
 */
const expiryTimers = new WeakMap<Socket, NodeJS.Timeout>();

/** IDs for log lines about `socket`: its own, and its bridge's or user's. */
export function socketLogFields(socket: Socket): Record<string, unknown> {
  const identity = (socket.data as { identity?: Identity }).identity;
  if (identity?.role === "bridge") {
    return { socketId: socket.id, bridgeId: identity.bridgeId };
  }
  return { socketId: socket.id, userId: identity?.userId };
}

/**
 * Disconnects `socket` when its token's `exp` passes, with the same clock
 * leeway as the handshake check. The timer gets its arguments rather than
 * a closure, so a socket costs one timer and no function of its own.
 */
export function disconnectOnExpiry(
  socket: Socket,
  exp: number | undefined,
  logger: Logger,
): void {
  if (exp === undefined) return;
  const remaining = (exp + CLOCK_TOLERANCE_SECONDS) * 1000 - Date.now();
  if (remaining <= 0) {
    logger.info(socketLogFields(socket), "token expired, disconnecting");
    socket.disconnect(true);
    return;
  }
  const timer = setTimeout(
    disconnectOnExpiry,
    Math.min(remaining, MAX_TIMER_MS),
    socket,
    exp,
    logger,
  );
  timer.unref();
  expiryTimers.set(socket, timer);
}

/** Stops the expiry timer that `disconnectOnExpiry` set on `socket`. */
export function cancelExpiry(socket: Socket): void {
  clearTimeout(expiryTimers.get(socket));
  expiryTimers.delete(socket);
}

/**
 * Closes the connection under `socket` when the client left the namespace
 * but kept the connection. Socket.IO checks only once, at its join
 * timeout, that a connection is in a namespace, so such a connection would
 * otherwise stay open with no token checked. A client uses one namespace
 * per connection, so none is left.
 */
export function closeConnectionAfterLeave(
  socket: Socket,
  reason: string,
): void {
  if (reason === "client namespace disconnect") socket.conn.close();
}
