import { createServer, type Server as HttpServer } from "node:http";
import { Server, type ServerOptions } from "socket.io";
import {
  APP_NAMESPACE,
  BRIDGE_NAMESPACE,
  type ServerInfo,
} from "../../client-sdk/src/protocol.ts";
import { TokenVerifier } from "../auth/verify.ts";
import type { RelayConfig } from "../config.ts";
import { createHttpApp } from "../http/app.ts";
import { answerClientErrors } from "../http/client-errors.ts";
import { serveRequestsInTurn } from "../http/pipelined-requests.ts";
import type { Logger } from "../logger.ts";
import type { ServerBus } from "../messaging/server-bus.ts";
import { relayRegistry, trackConnections } from "../metrics/relay-metrics.ts";
import type {
  ConnectionState,
  RelayRedisClient,
} from "../redis/connection-state.ts";
import type { RedisLeaseTable } from "../state/lease-table.ts";
import type { StateStore } from "../state/store.ts";
import { attachAppNamespace } from "../transport/app-namespace.ts";
import { attachBridgeNamespace } from "../transport/bridge-namespace.ts";
import { releaseUpgradeRequests } from "../transport/upgrade-requests.ts";
import { servePlainUpgrades } from "../transport/plain-upgrades.ts";
import { HandshakeError, MAX_TIMER_MS } from "../transport/handshake.ts";
import { jsonOnlyParser } from "../transport/json-only-parser.ts";
import { RateLimits } from "../transport/rate-limits.ts";
import { askAppsToResubscribe } from "./app-refresh.ts";
import { AppService, type OfflineExplanations } from "./app-service.ts";
import { namespaceBroadcaster } from "./broadcaster.ts";
import { BridgeSessions } from "./bridge-sessions.ts";
import { answerFromStored, CommandExecutor } from "./command-executor.ts";
import { CommandRouter } from "./command-router.ts";
import { ConnectionDrain } from "./drain.ts";
import { PresenceLease } from "./presence-lease.ts";
import { ResyncScheduler } from "./resync-scheduler.ts";
import { StallMonitor } from "./stall-monitor.ts";
import { StateWriter } from "./state-writer.ts";

/** Interval at which a bridge whose write the store rejected is asked for a snapshot, in ms. */
const RESYNC_INTERVAL_MS = 2000;
/** Extra time a command's origin waits beyond the bridge's own timeout, for the hops between processes. */
const ROUTING_MARGIN_MS = 1000;
/**
 * Time a new connection has to join `/bridge` or `/app`, in ms: Socket.IO
 * closes it after that. Until it joins, no token or rate limit has been
 * checked, so it is 10 s instead of Socket.IO's 45 s. NOTE: a guess that
 * leaves a client on a slow link time for its first packet.
 */
export const NAMESPACE_JOIN_TIMEOUT_MS = 10_000;
/** Time kept after the drain, before the shutdown deadline, to release claims and close Redis, in ms. */
const CLOSE_MARGIN_MS = 1000;

export interface RelayOptions {
  config: RelayConfig;
  logger: Logger;
  store: StateStore;
  bus: ServerBus;
  /** HS256 secret resolved at start (it may come from the development secret file). */
  secret: string | undefined;
  /** Socket.IO adapter (the Redis adapter in a cluster); the in-memory one when absent. */
  adapter?: ServerOptions["adapter"];
  /** Redis client for shared rate limits; memory limits when absent. */
  redis?: RelayRedisClient;
  /**
   * Connection state of `redis`. While it is not ready, a command for a
   * local bridge reads the store like any other, which fails fast.
   */
  redisState?: Pick<ConnectionState, "isReady">;
  awaitSubscriptions?: () => Promise<void>;
  /**
   * Explanations that turn `BRIDGE_OFFLINE` into `UNAVAILABLE` for a bridge
   * that may be connected: after Redis lost its data, or while its process
   * runs without its subscription. Absent in a single process.
   */
  offline?: OfflineExplanations;
  /**
   * Presence leases shared by the processes of a cluster, so that the
   * bridges of a process that dies without closing them go offline. A single
   * process needs none: its bridges go down with it.
   */
  leaseTable?: RedisLeaseTable;
  /**
   * Returns the Prometheus text served at `/metrics`: the whole machine's,
   * fetched from the cluster primary in a worker. Defaults to this
   * process's own registry.
   */
  scrapeMetrics?: () => Promise<string>;
}

export interface Relay {
  readonly serverId: string;
  readonly httpServer: HttpServer;
  readonly io: Server;
  /** Path prefix of Engine.IO's requests, with its trailing slash, as Engine.IO matches it. */
  readonly engineIoPath: string;
  /** Stops admitting connections and fails readiness, before `close()`. */
  drain(): void;
  /** Re-checks the claims of this process's bridges and drops its copies of lights, after a Redis outage. */
  revalidateBridges(): Promise<void>;
  /** Asks this process's apps to subscribe again, after a subscriber reconnect. */
  refreshApps(): void;
  /**
   * Finds the answers of commands whose replies may have been lost while
   * the subscriber was down, once it is back. Never rejects.
   */
  recoverCommandReplies(): Promise<void>;
  /**
   * Closes the sockets in batches over `DRAIN_WINDOW_MS`, each once its
   * work in flight is acknowledged, then the bus and the presence lease.
   */
  close(): Promise<void>;
}

/** Rejects handshakes to the main namespace `/`, which serves nothing. */
function rejectMainNamespace(io: Server): void {
  io.of("/").use((_socket, next) => {
    next(
      new HandshakeError(
        "namespace / is not served, connect to /bridge or /app",
        {
          code: "FORBIDDEN",
        },
      ),
    );
  });
}

/**
 * Builds one relay process: an HTTP server carrying Express and Socket.IO
 * with the `/bridge` and `/app` namespaces, on the given store and bus. It
 * does not listen: the caller listens, or hands it to the sticky balancer.
 */
export async function createRelay(options: RelayOptions): Promise<Relay> {
  const { config, logger, store, bus } = options;
  let draining = false;
  const isDraining = (): boolean => draining;

  // Socket.IO is attached to the HTTP server at the end, once the Express
  // app exists, because the app's API routes need the relay's services.
  const io = new Server({
    // The transport limit sits well above MAX_PAYLOAD_BYTES so that an oversized
    // payload reaches the relay and gets PAYLOAD_TOO_LARGE instead of a disconnect.
    maxHttpBufferSize: config.maxPayloadBytes * 2 + 64 * 1024,
    // Engine.IO's own limit on a polling POST's body is a total deadline of
    // 30 s. It is turned off: REQUEST_BODY_TIMEOUT_MS closes a body that
    // stalls, and a slow one that keeps arriving is waited for.
    httpRequestBodyTimeout: MAX_TIMER_MS,
    serveClient: false,
    parser: jsonOnlyParser,
    connectTimeout: NAMESPACE_JOIN_TIMEOUT_MS,
    // Upgrade requests outside Socket.IO's path are served as plain
    // requests (servePlainUpgrades), which Engine.IO would close after 1 s.
    destroyUpgrade: false,
    ...(options.adapter === undefined ? {} : { adapter: options.adapter }),
  });

  const verifier = new TokenVerifier({
    ...config.auth,
    secret: options.secret,
  });
  const limits = new RateLimits(config, options.redis);
  const stalls = new StallMonitor(config.commandTimeoutMs);
  stalls.start();
  const broadcaster = namespaceBroadcaster(io.of(APP_NAMESPACE));
  const bridges = io.of(BRIDGE_NAMESPACE);
  const leaseTable = options.leaseTable;
  const sessions = new BridgeSessions(
    store,
    bus,
    broadcaster,
    bridges,
    logger,
    leaseTable && PresenceLease.connectionIndex(leaseTable, bus.serverId),
  );
  const lease =
    leaseTable &&
    new PresenceLease({
      table: leaseTable,
      serverId: bus.serverId,
      heartbeatMs: config.presenceHeartbeatMs,
      store,
      sessions,
      broadcaster,
      logger,
    });
  const resyncs = new ResyncScheduler(
    (bridgeId) => sessions.get(bridgeId),
    RESYNC_INTERVAL_MS,
    logger,
  );
  const writer = new StateWriter(store, broadcaster, resyncs);
  const drain = new ConnectionDrain({
    windowMs: config.drainWindowMs,
    forceAfterMs: config.shutdownTimeoutMs - CLOSE_MARGIN_MS,
  });
  const executor = new CommandExecutor(
    sessions,
    store,
    writer,
    config.commandTimeoutMs,
    logger,
    config.limits.unansweredCommandsPerBridge,
    () => options.redisState?.isReady() ?? true,
  );
  const router = new CommandRouter(
    bus,
    drain.guardCommands(
      executor.execute,
      (bridgeId) => sessions.get(bridgeId)?.socket.id,
    ),
    config.commandTimeoutMs + ROUTING_MARGIN_MS,
    logger,
    {
      replyMarginMs: ROUTING_MARGIN_MS,
      storedAnswer: async (bridgeId, commandId) => {
        const stored = await store.getCommandAnswer(bridgeId, commandId);
        return stored === null ? null : answerFromStored(bridgeId, stored);
      },
    },
  );
  const service = new AppService(
    store,
    router,
    {
      serverId: bus.serverId,
      knowsLight: (bridgeId, lightId) => executor.knowsLight(bridgeId, lightId),
    },
    options.offline,
  );
  const untrackConnections = trackConnections({
    bridges: () => sessions.count,
    apps: () => io.of(APP_NAMESPACE).sockets.size,
  });
  const serverInfo: ServerInfo = config.production
    ? { serverId: bus.serverId }
    : { serverId: bus.serverId, pid: process.pid };

  // The lease exists before the first claim, so no claim can outlive it unseen.
  await lease?.start();
  await bus.listen((message) => {
    if (message.type === "replace") {
      sessions.disconnectReplaced(message.bridgeId, message.socketId);
      return;
    }
    if (message.type === "reclaim") {
      const reclaiming = sessions
        .reclaim(message.bridgeId, message.socketId, message.staleSocketId)
        .catch((error: unknown) => {
          logger.warn(
            { err: error, bridgeId: message.bridgeId },
            "could not claim a bridge again after an undone claim",
          );
        });
      drain.track(reclaiming);
      return;
    }
    if (message.type === "checkClaim") {
      const checking = sessions
        .checkClaim(
          message.bridgeId,
          message.socketId,
          message.requester,
          message.takeOver === true,
        )
        .catch((error: unknown) => {
          logger.warn(
            {
              err: error,
              bridgeId: message.bridgeId,
              socketId: message.socketId,
              requester: message.requester,
            },
            "could not check a bridge claim that another server asked about",
          );
        });
      drain.track(checking);
      return;
    }
    const handling = router.handle(message).catch((error: unknown) => {
      logger.error({ err: error }, "could not handle a bus message");
    });
    // A command's reply must be published before Redis closes on shutdown.
    drain.track(handling);
  });

  const common = {
    verifier,
    limits,
    logger,
    isDraining,
    maxPayloadBytes: config.maxPayloadBytes,
    serverInfo,
  };
  rejectMainNamespace(io);
  // First, so that the drain's socket middleware runs before the
  // namespaces' own, which then see only the requests the drain admitted.
  drain.watchNamespace(bridges);
  drain.watchNamespace(io.of(APP_NAMESPACE));
  attachBridgeNamespace(bridges, { ...common, sessions, writer });
  attachAppNamespace(io.of(APP_NAMESPACE), {
    ...common,
    service,
    stalls,
    awaitSubscriptions: options.awaitSubscriptions ?? (async () => undefined),
    maxBufferedBytes: config.limits.appMaxBufferedBytes,
  });

  const app = createHttpApp({
    // Both connections: a worker whose subscriber is down misses broadcasts
    // and the replies of routed commands.
    checkDependencies: async () => {
      await store.ping();
      await options.awaitSubscriptions?.();
    },
    isDraining,
    logger,
    api: {
      service,
      verifier,
      limits,
      stalls,
      maxPayloadBytes: config.maxPayloadBytes,
      linger: config.linger,
      logger,
    },
    scrapeMetrics: options.scrapeMetrics ?? (() => relayRegistry.metrics()),
    serverId: bus.serverId,
    production: config.production,
  });
  const httpServer = createServer(app);
  answerClientErrors(httpServer, config.linger, logger);
  io.attach(httpServer);
  releaseUpgradeRequests(httpServer);
  const engineIoPath = `${io.path().replace(/\/$/, "")}/`;
  servePlainUpgrades(httpServer, engineIoPath);
  // Inside the wrapper, the drain waits only for requests that are served.
  drain.watchHttp(httpServer);
  serveRequestsInTurn(httpServer);

  return {
    serverId: bus.serverId,
    httpServer,
    io,
    engineIoPath,
    drain: () => {
      draining = true;
    },
    revalidateBridges: async () => {
      writer.forgetCachedLights();
      await lease?.afterReconnect();
      await sessions.revalidate();
    },
    refreshApps: () => {
      askAppsToResubscribe(io.of(APP_NAMESPACE), logger);
    },
    recoverCommandReplies: () => router.recoverReplies(),
    close: async () => {
      draining = true;
      resyncs.close();
      stalls.stop();
      const summary = await drain.run([
        ...bridges.sockets.values(),
        ...io.of(APP_NAMESPACE).sockets.values(),
      ]);
      logger[summary.forced > 0 ? "warn" : "info"](
        { ...summary, windowMs: config.drainWindowMs },
        "connections drained",
      );
      // Requests still waiting for another server now get UNAVAILABLE.
      router.close();
      untrackConnections();
      await new Promise<void>((resolve) => io.close(() => resolve()));
      // Closing the sockets released their claims and broadcast the bridges'
      // offline presence. Both need Redis, so wait for them before it closes.
      // Releases may take 5 times the Redis limit, within the shutdown's
      // own deadline, and a release still running then keeps the presence
      // lease from being dropped, so that it expires into a sweep.
      await sessions.settleReleases();
      sessions.stopRetries();
      await lease?.stop();
      await bus.close();
    },
  };
}
