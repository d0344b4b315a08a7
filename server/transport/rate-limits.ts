import {
  RateLimiterMemory,
  RateLimiterRedis,
  RateLimiterRes,
  type RateLimiterAbstract,
} from "rate-limiter-flexible";
import type { RedisClientType } from "redis";
import type { RelayConfig } from "../config.ts";
import { RelayError } from "../errors.ts";

interface LimiterSpec {
  keyPrefix: string;
  points: number;
  duration: number;
}

/**
 * The relay's rate limits. Handshake limits are shared by every process
 * through Redis when it is configured (a memory limiter stands in while
 * Redis is down); the per-socket request limit is local, since a socket
 * lives on one process.
 */
export class RateLimits {
  private readonly perAddress: RateLimiterAbstract;
  private readonly perIdentity: RateLimiterAbstract;
  private readonly perSocket: RateLimiterMemory;

  constructor(config: RelayConfig, redis: RedisClientType | undefined) {
    const { limits, redisKeyPrefix } = config;
    this.perAddress = createLimiter(redis, {
      keyPrefix: `${redisKeyPrefix}:rl:address`,
      points: limits.handshakesPerAddressPerMinute,
      duration: 60,
    });
    this.perIdentity = createLimiter(redis, {
      keyPrefix: `${redisKeyPrefix}:rl:identity`,
      points: limits.handshakesPerIdentityPerMinute,
      duration: 60,
    });
    this.perSocket = new RateLimiterMemory({
      points: limits.requestsPerSocketPer10s,
      duration: 10,
    });
  }

  consumeHandshakeFromAddress(address: string): Promise<void> {
    return consume(
      this.perAddress,
      address,
      "too many connection attempts from this address",
    );
  }

  consumeHandshakeOfIdentity(identityKey: string): Promise<void> {
    return consume(
      this.perIdentity,
      identityKey,
      "too many connection attempts for this identity",
    );
  }

  consumeRequest(socketId: string): Promise<void> {
    return consume(
      this.perSocket,
      socketId,
      "too many requests on this connection",
    );
  }

  forgetSocket(socketId: string): void {
    void this.perSocket.delete(socketId);
  }
}

function createLimiter(
  redis: RedisClientType | undefined,
  spec: LimiterSpec,
): RateLimiterAbstract {
  if (redis === undefined) return new RateLimiterMemory(spec);
  return new RateLimiterRedis({
    ...spec,
    storeClient: redis,
    useRedisPackage: true,
    insuranceLimiter: new RateLimiterMemory(spec),
  });
}

async function consume(
  limiter: RateLimiterAbstract,
  key: string,
  message: string,
): Promise<void> {
  try {
    await limiter.consume(key);
  } catch (rejection) {
    if (rejection instanceof RateLimiterRes) {
      throw new RelayError("RATE_LIMITED", message, {
        retryAfterMs: Math.max(1, Math.ceil(rejection.msBeforeNext)),
      });
    }
    throw rejection;
  }
}
