import {
  RateLimiterMemory,
  RateLimiterRedis,
  RateLimiterRes,
} from "rate-limiter-flexible";
import { Counter } from "prom-client";
import type { RelayConfig } from "../config.ts";
import { RelayError } from "../errors.ts";
import { relayRegistry } from "../metrics/relay-metrics.ts";
import type { RelayRedisClient } from "../redis/connection-state.ts";
import {
  LimiterRedisHealth,
  RedisFirstLimiter,
} from "./redis-first-limiter.ts";
import { FLOOD_FACTOR } from "./flood-guard.ts";

const handshakesRateLimited = new Counter({
  name: "relay_handshakes_rate_limited_total",
  help: "Handshakes rejected with RATE_LIMITED, by the limit that rejected them (worker, address, identity).",
  labelNames: ["limit"] as const,
  registers: [relayRegistry],
});

interface LimiterSpec {
  keyPrefix: string;
  points: number;
  duration: number;
}

/** A rate limiter as the limits use it, Redis-backed or in memory. */
interface Limiter {
  consume(key: string, points?: number): Promise<RateLimiterRes>;
}

/** Largest `retryAfterMs` sent with a handshake that this process rejects. */
const MAX_HANDSHAKE_RETRY_AFTER_MS = 60_000;

/**
 * Token bucket: refills at `perSecond` tokens a second up to `capacity`,
 * so tokens left unused in a quiet moment serve the next burst. The fixed
 * windows of `RateLimiterMemory` lose them, which slowed a 5,000-bridge
 * reconnect storm by about a quarter.
 */
class TokenBucket {
  private tokens: number;
  private updatedAt: number;

  constructor(
    private readonly perSecond: number,
    private readonly capacity: number,
    private readonly now: () => number,
  ) {
    this.tokens = capacity;
    this.updatedAt = now();
  }

  /** Takes one token and returns 0, or returns the ms until one is available. */
  take(): number {
    const now = this.now();
    const refill = ((now - this.updatedAt) * this.perSecond) / 1000;
    this.tokens = Math.min(this.capacity, this.tokens + refill);
    this.updatedAt = now;
    if (this.tokens >= 1) {
      this.tokens -= 1;
      return 0;
    }
    return ((1 - this.tokens) * 1000) / this.perSecond;
  }
}

/**
 * Admits at most `perSecond` handshakes per second on this process, after
 * a burst of up to one second's worth. It counts in memory and at once, so
 * a rejection costs no token check and no Redis call. Each rejected client
 * gets a retry time one admission interval (1/perSecond s) after that of
 * the client rejected before it, so the retries of a reconnect storm come
 * back at about the admitted rate instead of all at once.
 */
export class HandshakeAdmission {
  private readonly bucket: TokenBucket;
  private readonly intervalMs: number;
  /** Retry time (ms since the epoch) sent to the last rejected handshake. */
  private lastRetryAt = 0;

  constructor(
    perSecond: number,
    private readonly now: () => number = Date.now,
  ) {
    this.bucket = new TokenBucket(perSecond, perSecond, now);
    this.intervalMs = 1000 / perSecond;
  }

  /** Returns when admitted; throws `RATE_LIMITED` with a retry time otherwise. */
  admit(): void {
    const waitMs = this.bucket.take();
    if (waitMs === 0) return;
    const now = this.now();
    // A retry time in the past is forgotten, so a quiet spell frees the schedule.
    const retryAt = Math.min(
      Math.max(this.lastRetryAt + this.intervalMs, now + waitMs),
      now + MAX_HANDSHAKE_RETRY_AFTER_MS,
    );
    this.lastRetryAt = retryAt;
    handshakesRateLimited.inc({ limit: "worker" });
    throw new RelayError(
      "RATE_LIMITED",
      "too many connection attempts on this server",
      { retryAfterMs: Math.max(1, Math.ceil(retryAt - now)) },
    );
  }
}

/**
 * The relay's rate limits. Handshake limits per address and identity are
 * shared by every process through Redis when it is configured, and counted
 * in memory while Redis is down. The per-process handshake admission and
 * the per-socket request limit are local, since they protect one process
 * and a socket lives on one process.
 */
export class RateLimits {
  private readonly perProcess: HandshakeAdmission;
  private readonly perAddress: Limiter;
  private readonly perIdentity: Limiter;
  private readonly perSocket: RateLimiterMemory;
  private readonly perApiUser: Limiter;
  private readonly apiPoints: number;
  /** Events of any kind a connection may send per flood window before it is closed. */
  readonly maxEventsPerSocketPerWindow: number;
  /**
   * Addresses that the address limit rejected, with the time (from
   * `performance.now()`) at which it admits them again, oldest first.
   */
  private readonly blockedAddresses = new Map<string, number>();

  constructor(config: RelayConfig, redis: RelayRedisClient | undefined) {
    const { limits, redisKeyPrefix } = config;
    this.perProcess = new HandshakeAdmission(
      limits.handshakesPerWorkerPerSecond,
    );
    const health = new LimiterRedisHealth();
    this.perAddress = createLimiter(redis, health, {
      keyPrefix: `${redisKeyPrefix}:rl:address`,
      points: limits.handshakesPerAddressPerMinute,
      duration: 60,
    });
    this.perIdentity = createLimiter(redis, health, {
      keyPrefix: `${redisKeyPrefix}:rl:identity`,
      points: limits.handshakesPerIdentityPerMinute,
      duration: 60,
    });
    this.perSocket = new RateLimiterMemory({
      points: limits.requestsPerSocketPer10s,
      duration: 10,
    });
    this.apiPoints = limits.requestsPerSocketPer10s;
    this.maxEventsPerSocketPerWindow =
      limits.requestsPerSocketPer10s * FLOOD_FACTOR;
    // API requests fail over to memory on their own, so a slow API
    // request in Redis leaves the handshake limits shared.
    this.perApiUser = createLimiter(redis, new LimiterRedisHealth(), {
      keyPrefix: `${redisKeyPrefix}:rl:api-user`,
      points: this.apiPoints,
      duration: 10,
    });
  }

  /** Throws `RATE_LIMITED` when this process admits no more handshakes this moment. */
  admitHandshakeOnProcess(): void {
    this.perProcess.admit();
  }

  /**
   * Throws `RATE_LIMITED` for an address that the address limit rejected
   * on this process and still rejects. Checked before this process's
   * handshake budget, so that a flood from one address, already over its
   * own limit, does not use up the budget that every other address needs.
   */
  rejectBlockedAddress(address: string): void {
    const admittedAt = this.blockedAddresses.get(address);
    if (admittedAt === undefined) return;
    const waitMs = admittedAt - performance.now();
    if (waitMs <= 0) {
      this.blockedAddresses.delete(address);
      return;
    }
    handshakesRateLimited.inc({ limit: "address" });
    throw new RelayError("RATE_LIMITED", ADDRESS_LIMIT_MESSAGE, {
      retryAfterMs: Math.max(1, Math.ceil(waitMs)),
    });
  }

  async consumeHandshakeFromAddress(address: string): Promise<void> {
    try {
      await consume(this.perAddress, address, ADDRESS_LIMIT_MESSAGE);
    } catch (error) {
      countRateLimited(error, "address");
      this.rememberBlockedAddress(address, error);
      throw error;
    }
  }

  private rememberBlockedAddress(address: string, error: unknown): void {
    if (!(error instanceof RelayError) || error.code !== "RATE_LIMITED") return;
    const waitMs = error.retryAfterMs ?? 0;
    this.blockedAddresses.delete(address);
    this.blockedAddresses.set(address, performance.now() + waitMs);
    if (this.blockedAddresses.size > MAX_BLOCKED_ADDRESSES) {
      const oldest = this.blockedAddresses.keys().next();
      if (oldest.done !== true) this.blockedAddresses.delete(oldest.value);
    }
  }

  async consumeHandshakeOfIdentity(identityKey: string): Promise<void> {
    try {
      await consume(
        this.perIdentity,
        identityKey,
        "too many connection attempts for this identity",
      );
    } catch (error) {
      countRateLimited(error, "identity");
      throw error;
    }
  }

  /**
   * Counts a request of `cost` (1 by default; see `bridgeListCost`) against
   * the connection's budget. A cost above the whole budget counts as the
   * budget, so such a request can still pass once per window.
   */
  consumeRequest(socketId: string, cost = 1): Promise<void> {
    return consume(
      this.perSocket,
      socketId,
      "too many requests on this connection",
      Math.min(cost, this.perSocket.points),
    );
  }

  /**
   * Counts an HTTP API request of `cost` against the user's budget of
   * `REQUESTS_PER_SOCKET_PER_10S`, shared through Redis by every process
   * (counted in memory while Redis fails). A cost above the whole budget
   * counts as the budget, as on sockets.
   */
  consumeApiRequest(userId: string, cost = 1): Promise<void> {
    return consume(
      this.perApiUser,
      userId,
      "too many requests for this user",
      Math.min(cost, this.apiPoints),
    );
  }

  forgetSocket(socketId: string): void {
    void this.perSocket.delete(socketId);
  }
}

/** Bridges that a listing may read for the cost of one request. */
export const BRIDGES_PER_REQUEST = 100;

const ADDRESS_LIMIT_MESSAGE = "too many connection attempts from this address";

/**
 * Addresses over their limit that a process remembers. Past it, the oldest
 * is forgotten and checked against the shared limit again.
 */
const MAX_BLOCKED_ADDRESSES = 10_000;

/**
 * Returns the requests a listing of `bridges` bridges counts as: one per
 * 100 bridges, at least one. Each listed bridge costs a Redis read, so a
 * token granting thousands of bridges would otherwise turn the request
 * budget into thousands of Redis commands a second.
 */
export function bridgeListCost(bridges: number): number {
  return Math.max(1, Math.ceil(bridges / BRIDGES_PER_REQUEST));
}

function countRateLimited(error: unknown, limit: "address" | "identity") {
  if (error instanceof RelayError && error.code === "RATE_LIMITED") {
    handshakesRateLimited.inc({ limit });
  }
}

function createLimiter(
  redis: RelayRedisClient | undefined,
  health: LimiterRedisHealth,
  spec: LimiterSpec,
): Limiter {
  const memory = new RateLimiterMemory(spec);
  if (redis === undefined) return memory;
  const shared = new RateLimiterRedis({
    ...spec,
    storeClient: redis,
    useRedisPackage: true,
  });
  return new RedisFirstLimiter(shared, memory, health);
}

async function consume(
  limiter: Limiter,
  key: string,
  message: string,
  points = 1,
): Promise<void> {
  try {
    await limiter.consume(key, points);
  } catch (rejection) {
    if (rejection instanceof RateLimiterRes) {
      throw new RelayError("RATE_LIMITED", message, {
        retryAfterMs: Math.max(1, Math.ceil(rejection.msBeforeNext)),
      });
    }
    throw rejection;
  }
}
