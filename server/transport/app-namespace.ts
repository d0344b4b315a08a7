import type { Namespace, Socket } from "socket.io";
import type { ServerInfo } from "../../client-sdk/src/protocol.ts";
import { AppService, authorize } from "../relay/app-service.ts";
import { bridgeRoom } from "../relay/rooms.ts";
import { parsePayload } from "../protocol/validate.ts";
import {
  appLightSetPayloadSchema,
  bridgeIdPayloadSchema,
  emptyPayloadSchema,
} from "../protocol/schemas.ts";
import {
  disconnectOnExpiry,
  handshakeMiddleware,
  socketIdentity,
  type HandshakeDeps,
} from "./handshake.ts";
import type { RateLimits } from "./rate-limits.ts";
import { onRequest, rejectUnknownEvents } from "./requests.ts";
import { closeWhenBacklogged } from "./slow-consumers.ts";

export interface AppNamespaceDeps extends HandshakeDeps {
  service: AppService;
  limits: RateLimits;
  maxPayloadBytes: number;
  /** Bytes waiting to be sent to one connection before the relay closes it. */
  maxBufferedBytes: number;
  serverInfo: ServerInfo;
  /**
   * Resolves once this process receives the broadcasts of rooms it just
   * joined, so a subscriber cannot miss an event published between its
   * join and its snapshot read.
   */
  awaitSubscriptions: () => Promise<void>;
}

/** Serves apps on `/app`: bridge listing, subscriptions and commands. */
export function attachAppNamespace(
  apps: Namespace,
  deps: AppNamespaceDeps,
): void {
  apps.use(handshakeMiddleware("app", deps));
  apps.on("connection", (socket) => serveApp(socket, deps));
}

function serveApp(socket: Socket, deps: AppNamespaceDeps): void {
  const identity = socketIdentity(socket, "app");
  const logger = deps.logger.child({
    socketId: socket.id,
    userId: identity.userId,
  });
  const cancelExpiry = disconnectOnExpiry(socket, identity.exp, logger);
  closeWhenBacklogged(socket, deps.maxBufferedBytes, logger);
  const options = { maxPayloadBytes: deps.maxPayloadBytes, logger };
  rejectUnknownEvents(socket, logger);
  const { service, limits } = deps;

  onRequest(
    socket,
    "bridge:list",
    async (payload) => {
      parsePayload(emptyPayloadSchema, payload);
      authorize(identity, "read");
      await limits.consumeRequest(socket.id);
      return { bridges: await service.listBridges(identity) };
    },
    options,
  );

  onRequest(
    socket,
    "bridge:subscribe",
    async (payload) => {
      const { bridgeId } = parsePayload(bridgeIdPayloadSchema, payload);
      authorize(identity, "read", bridgeId);
      await limits.consumeRequest(socket.id);
      return subscribe(socket, bridgeId, deps);
    },
    options,
  );

  onRequest(
    socket,
    "bridge:unsubscribe",
    async (payload) => {
      const { bridgeId } = parsePayload(bridgeIdPayloadSchema, payload);
      await socket.leave(bridgeRoom(bridgeId));
      return {};
    },
    options,
  );

  onRequest(
    socket,
    "light:set",
    async (payload) => {
      const request = parsePayload(appLightSetPayloadSchema, payload);
      authorize(identity, "control", request.bridgeId);
      await limits.consumeRequest(socket.id);
      const light = await service.setLight(request);
      return { light };
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
    limits.forgetSocket(socket.id);
    logger.debug({ reason }, "app disconnected");
  });
}

async function subscribe(
  socket: Socket,
  bridgeId: string,
  deps: AppNamespaceDeps,
) {
  const room = bridgeRoom(bridgeId);
  // Fail fast while Redis is down, before a join makes the adapter subscribe.
  await deps.awaitSubscriptions();
  await socket.join(room);
  try {
    await deps.awaitSubscriptions();
    return await deps.service.getBridge(bridgeId);
  } catch (error) {
    await socket.leave(room);
    throw error;
  }
}
