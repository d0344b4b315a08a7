import { Counter } from "prom-client";
import {
  RateLimiterRes,
  type RateLimiterMemory,
  type RateLimiterRedis,
} from "rate-limiter-flexible";
import { relayRegistry } from "../metrics/relay-metrics.ts";

/** How long the limiters count in memory alone after Redis failed one of them, in ms. */
export const MEMORY_ONLY_AFTER_FAILURE_MS = 1000;

const redisFailures = new Counter({
  name: "relay_rate_limiter_redis_failures_total",
  help: "Rate limiter requests (handshake and HTTP API limits) that failed or timed out in Redis and were counted in memory instead.",
  registers: [relayRegistry],
});

/** The time Redis last failed a limiter request, shared by the limiters that fail over together. */
export class LimiterRedisHealth {
  private failedAt = Number.NEGATIVE_INFINITY;

  constructor(private readonly now: () => number = () => performance.now()) {}

  /** True within MEMORY_ONLY_AFTER_FAILURE_MS of the last failure. */
  get failing(): boolean {
    return this.now() - this.failedAt < MEMORY_ONLY_AFTER_FAILURE_MS;
  }

  recordFailure(): void {
    this.failedAt = this.now();
  }
}

/**
 * A limiter that counts in Redis, shared by every process, and in memory
 * when Redis fails. After a failure every limiter sharing `health` counts
 * in memory alone for MEMORY_ONLY_AFTER_FAILURE_MS. A Redis that accepts
 * connections but does not reply would otherwise hold each handshake for
 * one command timeout per limit.
 */
export class RedisFirstLimiter {
  constructor(
    private readonly redis: RateLimiterRedis,
    private readonly memory: RateLimiterMemory,
    private readonly health: LimiterRedisHealth,
  ) {}

  async consume(key: string, points = 1): Promise<RateLimiterRes> {
    if (this.health.failing) return this.memory.consume(key, points);
    try {
      return await this.redis.consume(key, points);
    } catch (error) {
      // A rejection by the limit itself is not a Redis failure.
      if (error instanceof RateLimiterRes) throw error;
      this.health.recordFailure();
      redisFailures.inc();
      return this.memory.consume(key, points);
    }
  }
}
