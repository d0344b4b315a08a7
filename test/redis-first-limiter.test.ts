import assert from "node:assert/strict";
import { createClient, type RedisClientType } from "redis";
import {
  RateLimiterMemory,
  RateLimiterRedis,
  RateLimiterRes,
} from "rate-limiter-flexible";
import { loadConfig } from "../server/config.ts";
import { commandDeadline } from "../server/redis/clients.ts";
import { RateLimits } from "../server/transport/rate-limits.ts";
import {
  LimiterRedisHealth,
  MEMORY_ONLY_AFTER_FAILURE_MS,
  RedisFirstLimiter,
} from "../server/transport/redis-first-limiter.ts";
import { sleep } from "./support/faults.ts";
import { startRedisServer, type RedisServer } from "./support/redis-server.ts";

/** The Redis command limit of the limiters' client, in ms. */
const COMMAND_TIMEOUT_MS = 300;
const POINTS = 2;

describe("Redis-first limiter", function () {
  this.timeout(15_000);
  let redis: RedisServer;
  let client: RedisClientType;
  let admin: RedisClientType;
  let health: LimiterRedisHealth;

  /** Returns a limiter of POINTS a minute under `keyPrefix`, sharing `health`. */
  function limiter(keyPrefix: string): RedisFirstLimiter {
    const spec = { keyPrefix, points: POINTS, duration: 60 };
    const shared = new RateLimiterRedis({
      ...spec,
      storeClient: client,
      useRedisPackage: true,
    });
    return new RedisFirstLimiter(shared, new RateLimiterMemory(spec), health);
  }

  async function countedInRedis(keyPrefix: string, key: string) {
    return (await admin.exists(`${keyPrefix}:${key}`)) === 1;
  }

  before(async () => {
    redis = await startRedisServer();
    client = createClient({
      url: redis.url,
      commandOptions: commandDeadline(COMMAND_TIMEOUT_MS),
    });
    client.on("error", () => undefined);
    admin = createClient({ url: redis.url });
    await Promise.all([client.connect(), admin.connect()]);
  });

  beforeEach(() => {
    health = new LimiterRedisHealth();
  });

  after(async () => {
    await Promise.allSettled([client.close(), admin.close()]);
    await redis.stop();
  });

  it("counts in Redis and rejects past the limit", async () => {
    const address = limiter("rl-address");
    await address.consume("10.0.0.1");
    await address.consume("10.0.0.1");
    await assert.rejects(address.consume("10.0.0.1"), RateLimiterRes);
    assert.equal(await countedInRedis("rl-address", "10.0.0.1"), true);
  });

  it("skips a frozen Redis after one timeout", async () => {
    const address = limiter("rl-frozen-address");
    const identity = limiter("rl-frozen-identity");
    const pauseMs = 3 * COMMAND_TIMEOUT_MS;
    await admin.sendCommand(["CLIENT", "PAUSE", String(pauseMs), "WRITE"]);

    let startedAt = performance.now();
    await address.consume("10.0.0.2");
    const firstMs = performance.now() - startedAt;
    startedAt = performance.now();
    await identity.consume("bridge:1");
    await address.consume("10.0.0.2");
    const nextMs = performance.now() - startedAt;

    assert.ok(firstMs >= COMMAND_TIMEOUT_MS, `first took ${firstMs} ms`);
    assert.ok(nextMs < 50, `the next two took ${nextMs} ms`);
    // Counted in memory meanwhile: the limit still holds.
    await assert.rejects(address.consume("10.0.0.2"), RateLimiterRes);
  });

  it("asks Redis again a second after the failure", async () => {
    const address = limiter("rl-recovered-address");
    await admin.sendCommand([
      "CLIENT",
      "PAUSE",
      String(COMMAND_TIMEOUT_MS + 100),
      "WRITE",
    ]);
    await address.consume("10.0.0.3");
    assert.equal(health.failing, true);
    await sleep(MEMORY_ONLY_AFTER_FAILURE_MS + 50);

    assert.equal(health.failing, false);
    await address.consume("10.0.0.4");
    assert.equal(
      await countedInRedis("rl-recovered-address", "10.0.0.4"),
      true,
    );
  });

  it("keeps the API limit's failures from the handshake limits", async () => {
    const limits = new RateLimits(loadConfig({}), client);
    await admin.sendCommand([
      "CLIENT",
      "PAUSE",
      String(3 * COMMAND_TIMEOUT_MS),
      "WRITE",
    ]);
    await limits.consumeApiRequest("api-user");

    const startedAt = performance.now();
    await limits.consumeHandshakeFromAddress("10.0.0.5");
    const handshakeMs = performance.now() - startedAt;
    assert.ok(
      handshakeMs >= COMMAND_TIMEOUT_MS,
      `the handshake limit asked Redis too: ${Math.round(handshakeMs)} ms`,
    );
  });
});
