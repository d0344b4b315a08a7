import type { Namespace, Socket } from "socket.io";
import type {
  BridgeSessions,
  BridgeSession,
} from "../relay/bridge-sessions.ts";
import type { StateWriter } from "../relay/state-writer.ts";
import type { ServerInfo } from "../../client-sdk/src/protocol.ts";
import { parsePayload } from "../protocol/validate.ts";
import {
  changedPayloadSchema,
  emptyPayloadSchema,
  snapshotPayloadSchema,
} from "../protocol/schemas.ts";
import {
  cancelExpiry,
  closeConnectionAfterLeave,
  disconnectOnExpiry,
  handshakeMiddleware,
  socketIdentity,
  socketLogFields,
  toHandshakeError,
  type HandshakeDeps,
} from "./handshake.ts";
import type { RateLimits } from "./rate-limits.ts";
import {
  requestListeners,
  serveRequests,
  type RequestHandler,
  type RequestListeners,
  type SocketListener,
} from "./requests.ts";
import { inFlightLimit } from "./requests-in-flight.ts";
import {
  recordUndispatchedEvents,
  takeUndispatchedEvents,
} from "./undispatched-events.ts";

/**
 * Maximum requests of one bridge connection in service at once. A bridge
 * reports lights changed together in one request, and its writes run one
 * after another, so a longer backlog means the store has stopped replying.
 * It also bounds the wait of the bridge's offline presence for its last
 * writes: this many times the limit of a Redis command.
 */
export const BRIDGE_REQUESTS_IN_FLIGHT = 64;

export interface BridgeNamespaceDeps extends HandshakeDeps {
  sessions: BridgeSessions;
  writer: StateWriter;
  limits: RateLimits;
  maxPayloadBytes: number;
  serverInfo: ServerInfo;
}

/**
 * Serves bridge firmware on `/bridge`: claims the bridge for the newest
 * socket during the handshake, keeps it in room `bridge:<id>`, and applies
 * its state reports. The bridge's identity comes from its token, never
 * from a payload.
 */
export function attachBridgeNamespace(
  bridges: Namespace,
  deps: BridgeNamespaceDeps,
): void {
  bridges.use(handshakeMiddleware("bridge", deps));
  bridges.use(claimMiddleware(deps));
  const requests = requestListeners(bridgeRequests(deps), {
    maxPayloadBytes: deps.maxPayloadBytes,
    maxEventsPerWindow: deps.limits.maxEventsPerSocketPerWindow,
    inFlight: inFlightLimit(BRIDGE_REQUESTS_IN_FLIGHT, deps.maxPayloadBytes),
    logger: deps.logger,
  });
  const onDisconnect = disconnectListener(deps, requests);
  bridges.on("connection", (socket) =>
    serveBridge(socket, deps, requests, onDisconnect),
  );
}

/**
 * Sessions by socket. A session references its socket, so it lives beside
 * `socket.data`, not in it: `socket.data` stays plain data that the Redis
 * adapter can send to another process, as `fetchSockets()` does.
 */
const sessionsBySocket = new WeakMap<Socket, BridgeSession>();

function socketSession(socket: Socket): BridgeSession {
  const session = sessionsBySocket.get(socket);
  if (session === undefined)
    throw new Error(`socket ${socket.id} has no bridge session`);
  return session;
}

/**
 * Claims the bridge in the shared store before the connection completes,
 * so a bridge that cannot be claimed (Redis down) gets `connect_error`
 * with `UNAVAILABLE` rather than a connection that is dropped at once.
 */
function claimMiddleware(deps: BridgeNamespaceDeps) {
  return async (
    socket: Socket,
    next: (error?: Error) => void,
  ): Promise<void> => {
    const { bridgeId } = socketIdentity(socket, "bridge");
    let session: BridgeSession;
    try {
      session = await deps.sessions.claim(bridgeId, socket);
    } catch (error) {
      const rejection = toHandshakeError(error);
      deps.logger.warn(
        {
          err: error,
          bridgeId,
          socketId: socket.id,
          code: rejection.data.code,
        },
        "could not claim the bridge, handshake rejected",
      );
      next(rejection);
      return;
    }
    if (socket.conn.readyState !== "open") {
      // The client left during the claim, so Socket.IO will drop this socket
      // without a disconnect event: release the claim here.
      void deps.sessions.release(session).catch((error: unknown) => {
        deps.logger.warn(
          { err: error, bridgeId },
          "could not release an abandoned claim",
        );
      });
      next(new Error("connection closed during the handshake"));
      return;
    }
    sessionsBySocket.set(socket, session);
    next();
  };
}

/**
 * Starts serving a connected bridge. The request and disconnect listeners
 * are shared by all bridge sockets, so an idle bridge costs the socket,
 * its session and its expiry timer, and no closures.
 */
function serveBridge(
  socket: Socket,
  deps: BridgeNamespaceDeps,
  requests: RequestListeners,
  onDisconnect: SocketListener<[reason: string]>,
): void {
  const { exp, bridgeId } = socketIdentity(socket, "bridge");
  const { epoch } = socketSession(socket);
  recordUndispatchedEvents(socket);
  serveRequests(socket, requests);
  socket.on("disconnect", onDisconnect);
  deps.logger.info({ ...socketLogFields(socket), epoch }, "bridge connected");
  // Last, because a token that expired during the claim, or a newer
  // connection's claim meanwhile, disconnects the socket at once, and the
  // disconnect listener must release the claim.
  disconnectOnExpiry(socket, exp, deps.logger);
  deps.sessions.connected(bridgeId, socket);
}

function bridgeRequests(
  deps: BridgeNamespaceDeps,
): Record<string, RequestHandler> {
  return {
    "state:snapshot": async (payload, socket) => {
      const { lights } = parsePayload(snapshotPayloadSchema, payload);
      const session = socketSession(socket);
      const version = await deps.writer.applySnapshot(session, lights, () =>
        deps.limits.consumeRequest(socket.id),
      );
      session.resyncRequestedAt = undefined;
      return { version };
    },
    "state:changed": async (payload, socket) => {
      const { lights } = parsePayload(changedPayloadSchema, payload);
      const { version } = await deps.writer.applyChanges(
        socketSession(socket),
        lights,
        () => deps.limits.consumeRequest(socket.id),
      );
      return { version };
    },
    "relay:info": async (payload) => {
      parsePayload(emptyPayloadSchema, payload);
      return deps.serverInfo;
    },
  };
}

function disconnectListener(
  deps: BridgeNamespaceDeps,
  requests: RequestListeners,
): SocketListener<[reason: string]> {
  return function onDisconnect(this: Socket, reason) {
    const session = socketSession(this);
    const fields = socketLogFields(this);
    cancelExpiry(this);
    deps.logger.info({ ...fields, reason }, "bridge disconnected");
    closeConnectionAfterLeave(this, reason);
    const lastWrites = serveLastRequests(this, session, deps, requests);
    deps.sessions.release(session, lastWrites).catch((error: unknown) => {
      deps.logger.warn(
        { ...fields, err: error },
        "could not release the bridge's claim",
      );
    });
  };
}

/**
 * Serves the requests that Socket.IO dropped because the bridge
 * disconnected, and resolves once the bridge's writes, theirs included,
 * are done. Socket.IO passes a packet read with the disconnection to the
 * socket middleware a tick after reading it, so they are served once the
 * current turn of the event loop is over. The request limit counts them
 * in their writes' turn, so the socket's count is dropped only after that.
 */
async function serveLastRequests(
  socket: Socket,
  session: BridgeSession,
  deps: BridgeNamespaceDeps,
  requests: RequestListeners,
): Promise<void> {
  try {
    await new Promise((resolve) => setImmediate(resolve));
    serveUndispatchedRequests(socket, requests);
    await deps.writer.afterQueuedWrites(session.bridgeId);
  } finally {
    deps.limits.forgetSocket(socket.id);
  }
}

/**
 * Serves the requests that the bridge sent just before it disconnected,
 * which Socket.IO drops, so that its last state reports are stored. Their
 * acknowledgements do not reach the bridge. Should a request be served
 * twice, its second write changes nothing, because it carries the same
 * lights.
 */
function serveUndispatchedRequests(
  socket: Socket,
  requests: RequestListeners,
): void {
  for (const [event, ...args] of takeUndispatchedEvents(socket)) {
    if (typeof event !== "string") continue;
    requests.byEvent.get(event)?.apply(socket, args);
  }
}
