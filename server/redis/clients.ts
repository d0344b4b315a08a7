import { createClient, type RedisClientType } from "redis";
import type { Logger } from "../logger.ts";
import { redisErrors, redisReconnects } from "../metrics/relay-metrics.ts";
import { retryShardedSubscriptions } from "./sharded-subscriptions.ts";

export interface RedisClients {
  /** Commands and publishes. */
  main: RedisClientType;
  /** Subscriptions: the adapter's rooms and this process's bus channel. */
  subscriber: RedisClientType;
  close(): Promise<void>;
}

/** Maximum wait between reconnection attempts, in ms. */
const MAX_RECONNECT_DELAY_MS = 5000;

/**
 * Returns the wait before reconnection attempt `retries` (from 0), in ms:
 * 100 ms doubling up to 5 s, of which a random half is taken off. Without
 * the random part every connection of every process retried at the same
 * moment, loading a Redis that had just come back.
 */
export function reconnectDelay(retries: number, random = Math.random): number {
  const ceiling = Math.min(100 * 2 ** retries, MAX_RECONNECT_DELAY_MS);
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

function watch(client: RedisClientType, role: string, logger: Logger): void {
  let failures = 0;
  client.on("error", (error: unknown) => {
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
 * Connects the two Redis clients a relay process needs. Commands fail at
 * once while Redis is unreachable (no offline queue), so requests answer
 * `UNAVAILABLE` instead of hanging; the clients keep reconnecting.
 */
export async function connectRedis(
  url: string,
  logger: Logger,
): Promise<RedisClients> {
  const main: RedisClientType = createClient({
    url,
    disableOfflineQueue: true,
    socket: {
      reconnectStrategy: (retries: number) => reconnectDelay(retries),
    },
  });
  const subscriber = main.duplicate();
  watch(main, "main", logger);
  watch(subscriber, "subscriber", logger);
  retryShardedSubscriptions(subscriber, logger);
  await Promise.all([main.connect(), subscriber.connect()]);
  return {
    main,
    subscriber,
    close: async () => {
      await Promise.allSettled([main.close(), subscriber.close()]);
    },
  };
}
