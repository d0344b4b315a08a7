import { createClient, type RedisClientType } from "redis";
import { RelayError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import { redisErrors, redisReconnects } from "../metrics/relay-metrics.ts";
import {
  serverConnectionState,
  type ConnectionState,
  type RelayRedisClient,
} from "./connection-state.ts";
import { retryShardedSubscriptions } from "./sharded-subscriptions.ts";
import {
  limitedCommands,
  QUEUE_LIMIT_FACTOR,
  StallTolerantLimit,
} from "./stall-tolerant-limit.ts";

/** The two Redis clients of a relay process, for one Redis server or for a Redis Cluster. */
export interface RedisClients<
  Client extends RelayRedisClient = RedisClientType,
> {
  /**
   * Commands and publishes of the adapter, the rate limiters and the
   * lease table, with node-redis's command timeout.
   */
  main: Client;
  /**
   * The main client under a StallTolerantLimit of the command timeout,
   * for the requests' state store and bus.
   */
  requests: Client;
  /**
   * The main client under a limit BACKGROUND_LIMIT_FACTOR times as long,
   * for commands that no request waits for (claim releases).
   */
  background: Client;
  /** Subscriptions: the adapter's rooms and this process's bus channel. */
  subscriber: Client;
  mainState: ConnectionState;
  subscriberState: ConnectionState;
  /**
   * Resolves once the sharded subscriptions requested so far are in effect
   * and the subscriber's connections respond. Rejects with `UNAVAILABLE`
   * otherwise.
   */
  awaitSubscriptions(): Promise<void>;
  /**
   * Returns keys derived from `baseKey` that land on every Redis server
   * holding data: `baseKey` itself for one server, one key per master for
   * a cluster. Writing each checks that every server accepts writes.
   */
  keysOnEveryMaster(baseKey: string): string[];
  close(): Promise<void>;
}

/** Maximum wait between reconnection attempts, in ms. */
export const MAX_RECONNECT_DELAY_MS = 5000;

/**
 * Returns the wait before reconnection attempt `retries` (from 0), in ms:
 * 100 ms doubling up to `maxDelayMs` (5 s by default), of which a random
 * half is taken off. Without the random part every connection of every
 * process retried at the same moment, loading a Redis that had just come
 * back.
 */
export function reconnectDelay(
  retries: number,
  random = Math.random,
  maxDelayMs = MAX_RECONNECT_DELAY_MS,
): number {
  const ceiling = Math.min(100 * 2 ** retries, maxDelayMs);
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/** Returns the rejection of a request that needs the subscriptions while they are down. */
export function subscriptionsUnavailable(): RelayError {
  return new RelayError(
    "UNAVAILABLE",
    "subscriptions are unavailable, retry later",
  );
}

function watch(
  client: RedisClientType,
  role: string,
  logger: Logger,
  onError?: (error: unknown) => void,
): void {
  let failures = 0;
  client.on("error", (error: unknown) => {
    onError?.(error);
    failures += 1;
    redisErrors.inc({ role });
    // Log the first failure and then one in 50, so an outage does not flood the log.
    if (failures === 1 || failures % 50 === 0) {
      logger.error(
        { err: error, connection: role, failures },
        "redis connection error",
      );
    }
  });
  client.on("reconnecting", () => {
    redisReconnects.inc({ role });
    logger.debug({ connection: role }, "reconnecting to redis");
  });
  client.on("ready", () => {
    if (failures > 0)
      logger.info({ connection: role, failures }, "redis connection restored");
    failures = 0;
  });
}

/**
 * Factor from the main command limit to that of background commands.
 * After a burst of thousands of disconnects, releases failed that Redis
 * had not yet received within the request limit. A release is correct
 * whenever Redis runs it, since it names the claim's epoch or socket, so
 * it can wait longer.
 */
export const BACKGROUND_LIMIT_FACTOR = 5;

/**
 * Returns the limited views of `main` that requests and background
 * commands use. Each fails commands after its StallTolerantLimit, and
 * node-redis's own timeout, QUEUE_LIMIT_FACTOR times as long, ends those
 * that stay in its queue.
 */
export function limitedClients<
  Client extends {
    withCommandOptions(options: ReturnType<typeof commandDeadline>): Client;
  },
>(main: Client, limitMs: number): { requests: Client; background: Client } {
  const limited = (ms: number): Client =>
    limitedCommands(
      main.withCommandOptions(commandDeadline(ms * QUEUE_LIMIT_FACTOR)),
      new StallTolerantLimit(ms),
    );
  return {
    requests: limited(limitMs),
    background: limited(limitMs * BACKGROUND_LIMIT_FACTOR),
  };
}

/**
 * Options of the main client's commands: each fails once Redis has not
 * replied within `timeoutMs`, also after it was sent, so a Redis that
 * accepts connections but does not respond fails requests with
 * `UNAVAILABLE` instead of holding them.
 */
export function commandDeadline(timeoutMs: number) {
  return { timeout: timeoutMs, rejectInFlight: true } as const;
}

/**
 * Connects the two Redis clients a relay process needs, to the Redis server
 * at `url`. Commands fail at once while Redis is unreachable (no offline
 * queue) and after `commandTimeoutMs` without a reply, so requests fail
 * with `UNAVAILABLE` instead of hanging, and the clients keep
 * reconnecting. The subscriber's commands have no such deadline: a
 * subscription stays requested until Redis replies. `onError` receives
 * every connection error, also those left out of the log.
 */
export async function connectRedis(
  url: string,
  commandTimeoutMs: number,
  logger: Logger,
  onError?: (error: unknown) => void,
): Promise<RedisClients> {
  const main: RedisClientType = createClient({
    url,
    disableOfflineQueue: true,
    commandOptions: commandDeadline(commandTimeoutMs),
    socket: {
      reconnectStrategy: (retries: number) => reconnectDelay(retries),
    },
  });
  const subscriber = main.duplicate({ commandOptions: {} });
  watch(main, "main", logger, onError);
  watch(subscriber, "subscriber", logger, onError);
  retryShardedSubscriptions(
    subscriber,
    (listener) => subscriber.on("ready", listener),
    logger,
  );
  await Promise.all([main.connect(), subscriber.connect()]);
  return {
    main,
    ...limitedClients(main, commandTimeoutMs),
    subscriber,
    mainState: serverConnectionState(main),
    subscriberState: serverConnectionState(subscriber),
    awaitSubscriptions: async () => {
      // Commands on one connection run in order, so this PING returns after
      // any SSUBSCRIBE sent before it: one the adapter sent for a room just
      // created, or those the client sent again on reconnecting.
      try {
        await subscriber.ping();
      } catch {
        throw subscriptionsUnavailable();
      }
    },
    keysOnEveryMaster: (baseKey) => [baseKey],
    close: async () => {
      await Promise.allSettled([main.close(), subscriber.close()]);
    },
  };
}
