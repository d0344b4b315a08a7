import type { RedisTarget } from "../config.ts";
import type { Logger } from "../logger.ts";

/** Returns `url` without its password, for logs. */
function withoutPassword(url: string): string {
  const parsed = new URL(url);
  if (parsed.password !== "") parsed.password = "";
  return parsed.toString();
}

/** Returns the Redis server URL or the cluster's seed URLs, without passwords, for logs. */
export function describeRedisTarget(target: RedisTarget): string {
  return target.kind === "standalone"
    ? withoutPassword(target.url)
    : target.nodeUrls.map(withoutPassword).join(",");
}

/** Watch over a worker's first connection to Redis, from `watchRedisStartWait`. */
export interface RedisStartWait {
  /** Stores `error` as the last connection error, for the next warning. */
  recordError(error: unknown): void;
  /** Stops the warnings: the worker has connected, or gives up. */
  stop(): void;
}

/**
 * Logs a warning every `intervalMs` until `stop()`, while a worker waits
 * for its first Redis connection. The clients log only their first
 * connection error and then one in 50, so without these lines a relay
 * whose Redis is unreachable at start logs nothing for minutes while it
 * does not listen.
 */
export function watchRedisStartWait(
  target: RedisTarget,
  intervalMs: number,
  logger: Logger,
): RedisStartWait {
  const startedAt = Date.now();
  let lastError: unknown;
  let stopped = false;
  const timer = setInterval(() => {
    logger.warn(
      {
        waitedMs: Date.now() - startedAt,
        redis: describeRedisTarget(target),
        err: lastError,
      },
      "waiting for Redis: the worker is not ready, and the relay does not listen until a worker is ready",
    );
  }, intervalMs);
  return {
    recordError: (error) => {
      if (!stopped) lastError = error;
    },
    stop: () => {
      stopped = true;
      clearInterval(timer);
    },
  };
}
