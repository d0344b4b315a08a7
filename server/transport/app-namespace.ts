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
  cancelExpiry,
  closeConnectionAfterLeave,
  disconnectOnExpiry,
  handshakeMiddleware,
  socketIdentity,
  socketLogFields,
  type HandshakeDeps,
} from "./handshake.ts";
import { lateCommandError, type StallMonitor } from "../relay/stall-monitor.ts";
import { bridgeListCost, type RateLimits } from "./rate-limits.ts";
import {
  requestListeners,
  serveRequests,
  type RequestHandler,
  type RequestListeners,
  type SocketListener,
} from "./requests.ts";
import { inFlightLimit } from "./requests-in-flight.ts";
import { closeWhenBacklogged } from "./slow-consumers.ts";

export interface AppNamespaceDeps extends HandshakeDeps {
  service: AppService;
  limits: RateLimits;
  maxPayloadBytes: number;
  /** Bytes waiting to be sent to one connection before the relay closes it. */
  maxBufferedBytes: number;
  serverInfo: ServerInfo;
  /** Tells whether a command read now may have waited through a stall. */
  stalls: StallMonitor;
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
  const requests = requestListeners(appRequests(deps), {
    maxPayloadBytes: deps.maxPayloadBytes,
    maxEventsPerWindow: deps.limits.maxEventsPerSocketPerWindow,
    // Commands wait for their bridges, and the request limit counts them
    // as they arrive, so only their bytes are bounded here.
    inFlight: inFlightLimit(
      deps.limits.maxEventsPerSocketPerWindow,
      deps.maxPayloadBytes,
    ),
    logger: deps.logger,
  });
  const onDisconnect = disconnectListener(deps);
  apps.on("connection", (socket) =>
    serveApp(socket, deps, requests, onDisconnect),
  );
}

/** Starts serving a connected app with the listeners shared by all app sockets. */
function serveApp(
  socket: Socket,
  deps: AppNamespaceDeps,
  requests: RequestListeners,
  onDisconnect: SocketListener<[reason: string]>,
): void {
  const { exp } = socketIdentity(socket, "app");
  closeWhenBacklogged(socket, deps.maxBufferedBytes, deps.logger);
  serveRequests(socket, requests);
  socket.on("disconnect", onDisconnect);
  // Last, so that a socket it disconnects at once still runs the listeners.
  disconnectOnExpiry(socket, exp, deps.logger);
}

function appRequests(deps: AppNamespaceDeps): Record<string, RequestHandler> {
  const { service, limits } = deps;
  return {
    "bridge:list": async (payload, socket) => {
      parsePayload(emptyPayloadSchema, payload);
      const identity = socketIdentity(socket, "app");
      authorize(identity, "read");
      await limits.consumeRequest(
        socket.id,
        bridgeListCost(identity.bridges.size),
      );
      return { bridges: await service.listBridges(identity) };
    },
    "bridge:subscribe": async (payload, socket) => {
      const { bridgeId } = parsePayload(bridgeIdPayloadSchema, payload);
      authorize(socketIdentity(socket, "app"), "read", bridgeId);
      await limits.consumeRequest(socket.id);
      return subscribe(socket, bridgeId, deps);
    },
    "bridge:unsubscribe": async (payload, socket) => {
      const { bridgeId } = parsePayload(bridgeIdPayloadSchema, payload);
      await socket.leave(bridgeRoom(bridgeId));
      return {};
    },
    "light:set": async (payload, socket) => {
      const request = parsePayload(appLightSetPayloadSchema, payload);
      authorize(socketIdentity(socket, "app"), "control", request.bridgeId);
      // Checked before the first wait, while the loop turn that read the
      // command runs, and after the checks that come first in the contract.
      if (deps.stalls.inputMayBeLate) throw lateCommandError();
      await limits.consumeRequest(socket.id);
      const light = await service.setLight(request);
      return { light };
    },
    "relay:info": async (payload) => {
      parsePayload(emptyPayloadSchema, payload);
      return deps.serverInfo;
    },
  };
}

function disconnectListener(
  deps: AppNamespaceDeps,
): SocketListener<[reason: string]> {
  return function onDisconnect(this: Socket, reason) {
    cancelExpiry(this);
    deps.limits.forgetSocket(this.id);
    deps.logger.debug({ ...socketLogFields(this), reason }, "app disconnected");
    closeConnectionAfterLeave(this, reason);
  };
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
