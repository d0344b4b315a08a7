import type { Namespace, Socket } from "socket.io";
import type {
  BridgeSessions,
  BridgeSession,
} from "../relay/bridge-sessions.ts";
import { bridgeRoom } from "../relay/rooms.ts";
import type { StateWriter } from "../relay/state-writer.ts";
import type { ServerInfo } from "../../client-sdk/src/protocol.ts";
import type { Logger } from "../logger.ts";
import { parsePayload } from "../protocol/validate.ts";
import {
  changedPayloadSchema,
  emptyPayloadSchema,
  snapshotPayloadSchema,
} from "../protocol/schemas.ts";
import {
  disconnectOnExpiry,
  handshakeMiddleware,
  socketIdentity,
  type HandshakeDeps,
} from "./handshake.ts";
import type { RateLimits } from "./rate-limits.ts";
import { onRequest } from "./requests.ts";

export interface BridgeNamespaceDeps extends HandshakeDeps {
  sessions: BridgeSessions;
  writer: StateWriter;
  limits: RateLimits;
  maxPayloadBytes: number;
  serverInfo: ServerInfo;
}

/**
 * Serves bridge firmware on `/bridge`: claims the bridge for the newest
 * socket, keeps it in room `bridge:<id>`, and applies its state reports.
 * The bridge's identity comes from its token, never from a payload.
 */
export function attachBridgeNamespace(
  bridges: Namespace,
  deps: BridgeNamespaceDeps,
): void {
  bridges.use(handshakeMiddleware("bridge", deps));
  bridges.on("connection", (socket) => serveBridge(socket, deps));
}

function serveBridge(socket: Socket, deps: BridgeNamespaceDeps): void {
  const { bridgeId, exp } = socketIdentity(socket, "bridge");
  const logger = deps.logger.child({ socketId: socket.id, bridgeId });
  const claimed = claim(socket, bridgeId, deps, logger);
  const cancelExpiry = disconnectOnExpiry(socket, exp, logger);
  const options = { maxPayloadBytes: deps.maxPayloadBytes, logger };

  onRequest(
    socket,
    "state:snapshot",
    async (payload) => {
      const { lights } = parsePayload(snapshotPayloadSchema, payload);
      await deps.limits.consumeRequest(socket.id);
      const version = await deps.writer.applySnapshot(await claimed, lights);
      return { version };
    },
    options,
  );

  onRequest(
    socket,
    "state:changed",
    async (payload) => {
      const { lights } = parsePayload(changedPayloadSchema, payload);
      await deps.limits.consumeRequest(socket.id);
      const { version } = await deps.writer.applyChanges(await claimed, lights);
      return { version };
    },
    options,
  );

  onRequest(
    socket,
    "relay:info",
    async (payload) => {
      parsePayload(emptyPayloadSchema, payload);
      return deps.serverInfo;
    },
    options,
  );

  socket.on("disconnect", (reason) => {
    cancelExpiry();
    deps.limits.forgetSocket(socket.id);
    logger.info({ reason }, "bridge disconnected");
    claimed
      .then((session) => deps.sessions.release(session))
      .catch((error: unknown) =>
        logger.warn({ err: error }, "could not release the bridge's claim"),
      );
  });
}

function claim(
  socket: Socket,
  bridgeId: string,
  deps: BridgeNamespaceDeps,
  logger: Logger,
): Promise<BridgeSession> {
  const claimed = deps.sessions.claim(bridgeId, socket).then(
    async (session) => {
      await socket.join(bridgeRoom(bridgeId));
      logger.info({ epoch: session.epoch }, "bridge connected");
      return session;
    },
    (error: unknown) => {
      logger.error({ err: error }, "could not claim the bridge, disconnecting");
      socket.disconnect(true);
      throw error;
    },
  );
  claimed.catch(() => undefined);
  return claimed;
}
