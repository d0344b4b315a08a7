import cluster from "node:cluster";
import { randomBytes } from "node:crypto";
import { createShardedAdapter } from "@socket.io/redis-adapter";
import { setupWorker } from "@socket.io/sticky";
import type { RedisTarget, RelayConfig } from "../config.ts";
import type { Logger } from "../logger.ts";
import { clusterMetricsClient } from "../metrics/cluster-metrics.ts";
import { RedisBus } from "../messaging/server-bus.ts";
import {
  UnsubscribedMarker,
  unsubscribedCheck,
} from "../messaging/unsubscribed-marker.ts";
import {
  connectRedis,
  MAX_RECONNECT_DELAY_MS,
  type RedisClients,
} from "../redis/clients.ts";
import { connectRedisCluster } from "../redis/cluster-clients.ts";
import { watchRedisStartWait } from "../redis/start-wait.ts";
import type { RelayRedisClient } from "../redis/connection-state.ts";
import { createRelay, type Relay } from "../relay/create-relay.ts";
import { DataLossWindow } from "../state/data-loss-window.ts";
import { guardStore } from "../state/guarded-store.ts";
import { RedisLeaseTable } from "../state/lease-table.ts";
import { RedisStore } from "../state/redis-store.ts";
import { capRelayConnections, servedAtCap } from "./connection-cap.ts";
import { bindSessionsBeforeHandshake } from "./session-binding.ts";
import { installShutdown } from "./shutdown.ts";
import { releaseForwardedConnections } from "./forwarded-connections.ts";
import {
  closeStalledConnections,
  HEADERS_TIMEOUT_MS,
} from "./stalled-connections.ts";
import { PING_MESSAGE, PONG_MESSAGE } from "./worker-watchdog.ts";
import { sendToPrimary, watchPrimaryErrors } from "./worker-ipc.ts";

/** Message from the primary asking a worker to drain and exit. */
export const SHUTDOWN_MESSAGE = "relay:shutdown";
/** Message from a worker telling the primary that it can take connections. */
export const READY_MESSAGE = "relay:worker-ready";

/**
 * How long requests that find no claim get `UNAVAILABLE` after Redis
 * lost its data, in ms. Every process's connections retry at most
 * MAX_RECONNECT_DELAY_MS apart, so the last one is back within that time
 * of the first. The other half is left for its claims to be made again.
 * NOTE: an estimate: a process cut off from Redis for longer than the
 * reconnect delay, or slower to revalidate, claims its bridges after the
 * window, and they read offline meanwhile.
 */
const DATA_LOSS_WINDOW_MS = 2 * MAX_RECONNECT_DELAY_MS;

/** Connects the worker's Redis clients to one Redis server or to a Redis Cluster. */
function connectTo(
  target: RedisTarget,
  commandTimeoutMs: number,
  logger: Logger,
  onError: (error: unknown) => void,
): Promise<RedisClients<RelayRedisClient>> {
  return target.kind === "cluster"
    ? connectRedisCluster(target.nodeUrls, commandTimeoutMs, logger, onError)
    : connectRedis(target.url, commandTimeoutMs, logger, onError);
}

/**
 * Connects the worker's Redis clients, and logs a warning every
 * `config.startupWaitLogIntervalMs` until they are ready.
 */
async function connectLoggingWait(
  target: RedisTarget,
  config: RelayConfig,
  logger: Logger,
): Promise<RedisClients<RelayRedisClient>> {
  const wait = watchRedisStartWait(
    target,
    config.startupWaitLogIntervalMs,
    logger,
  );
  try {
    return await connectTo(
      target,
      config.redisCommandTimeoutMs,
      logger,
      wait.recordError,
    );
  } finally {
    wait.stop();
  }
}

/**
 * Logs why the worker is about to exit when its primary is gone (killed or
 * crashed). Node exits the worker right after the `disconnect` event,
 * without the drain. JSON logs are written synchronously. Pretty logs go
 * through a thread that pino flushes on exit, and the line got out in
 * both formats when the primary was killed with SIGKILL.
 */
function logPrimaryLoss(log: Logger): void {
  const worker = cluster.worker;
  worker?.on("disconnect", () => {
    if (worker.exitedAfterDisconnect) return;
    log.warn("primary process is gone, exiting without a drain");
  });
}

/**
 * Runs one cluster worker: a relay on Redis whose connections arrive from
 * the primary's sticky balancer rather than from its own listener.
 */
export async function runWorker(
  config: RelayConfig,
  secret: string | undefined,
  logger: Logger,
): Promise<Relay> {
  if (config.redis === undefined)
    throw new Error("a cluster worker needs REDIS_URL or REDIS_CLUSTER_NODES");
  const serverId = randomBytes(6).toString("hex");
  // The process logger already carries the worker's cluster ID.
  const log = logger.child({ serverId });
  watchPrimaryErrors(log);
  const redis = await connectLoggingWait(config.redis, config, log);
  const store = guardStore(
    new RedisStore(redis.requests, {
      keyPrefix: config.redisKeyPrefix,
      healthCheckKeys: (baseKey) => redis.keysOnEveryMaster(baseKey),
      releaseClient: redis.background,
    }),
    log,
  );
  const bus = new RedisBus(
    serverId,
    {
      main: redis.requests,
      subscriber: redis.subscriber,
      subscriberState: redis.subscriberState,
    },
    config.redisKeyPrefix,
    log,
    config.redis.kind === "standalone",
  );
  const dataLoss = new DataLossWindow({
    client: redis.requests,
    keyPrefix: config.redisKeyPrefix,
    sentinelKeys: (baseKey) => redis.keysOnEveryMaster(baseKey),
    windowMs: DATA_LOSS_WINDOW_MS,
    serverId,
    logger: log,
  });
  dataLoss.watch(redis.mainState);
  await dataLoss.start();
  const unsubscribed = new UnsubscribedMarker(
    redis.requests,
    config.redisKeyPrefix,
    serverId,
    log,
  );
  unsubscribed.watch(redis.mainState, redis.subscriberState);
  const awaitSubscriptions = () => redis.awaitSubscriptions();
  const relay = await createRelay({
    config,
    logger: log,
    store,
    bus,
    secret,
    redis: redis.main,
    redisState: redis.mainState,
    leaseTable: new RedisLeaseTable(redis.main, config.redisKeyPrefix),
    scrapeMetrics: clusterMetricsClient(log),
    adapter: createShardedAdapter(redis.main, redis.subscriber, {
      channelPrefix: `${config.redisKeyPrefix}:sio`,
      subscriptionMode: "dynamic",
    }),
    awaitSubscriptions,
    offline: {
      dataLoss,
      isUnsubscribed: unsubscribedCheck(redis.requests, config.redisKeyPrefix),
    },
  });
  // After an outage, recovery waits for both connections: a bridge claimed
  // again before the subscriber is back would be announced online while
  // commands to it cannot arrive.
  // - Redis may have come back empty: check that this worker's bridge
  //   claims survived.
  // - Broadcasts published while the subscriber was down are lost, so
  //   local apps are asked to subscribe again.
  // - Command replies published meanwhile are lost too, so the answers of
  //   the commands still waiting are looked up.
  let subscriberLost = false;
  bus.onReceivingLost(() => {
    subscriberLost = true;
  });
  const recover = async (): Promise<void> => {
    if (!redis.mainState.isReady() || !redis.subscriberState.isReady()) return;
    await awaitSubscriptions();
    if (subscriberLost) await relay.recoverCommandReplies();
    await relay.revalidateBridges();
    if (!subscriberLost) return;
    subscriberLost = false;
    relay.refreshApps();
  };
  const recoverAndLog = (): void => {
    recover().catch((error: unknown) => {
      log.warn({ err: error }, "could not recover after a Redis reconnect");
    });
  };
  redis.mainState.onReconnected(recoverAndLog);
  redis.subscriberState.onReconnected(recoverAndLog);
  if (config.maxConnections !== undefined) {
    capRelayConnections(
      relay.httpServer,
      { max: config.maxConnections, reserve: config.connectionReserve },
      servedAtCap(relay.engineIoPath),
      log,
      { listens: false },
    );
  }
  setupWorker(relay.io);
  releaseForwardedConnections(relay.httpServer);
  closeStalledConnections(relay.httpServer, {
    headersTimeoutMs: HEADERS_TIMEOUT_MS,
    bodyTimeoutMs: config.requestBodyTimeoutMs,
  });
  bindSessionsBeforeHandshake(relay.io, log);
  installShutdown(relay, config, log, async () => {
    // Logs the count of store failures not yet reported.
    await store.close();
    dataLoss.stop();
    unsubscribed.stop();
    await redis.close();
  });
  logPrimaryLoss(log);
  process.on("message", (message) => {
    if (message === PING_MESSAGE) sendToPrimary(PONG_MESSAGE, log);
    if (message === SHUTDOWN_MESSAGE) process.emit("SIGTERM");
  });
  // Tell the primary first, so that a reader of the log who connects on
  // seeing "worker ready" finds the worker already admitted by the balancer.
  sendToPrimary(READY_MESSAGE, log);
  log.info("worker ready");
  return relay;
}
