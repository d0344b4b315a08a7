import assert from "node:assert/strict";
import { pino } from "pino";
import { createClient, type RedisClientType } from "redis";
import { RelayError } from "../server/errors.ts";
import { guardStore } from "../server/state/guarded-store.ts";
import { RedisStore } from "../server/state/redis-store.ts";
import { randomBridgeId, settle } from "./support/clients.ts";
import { startRedisServer, type RedisServer } from "./support/redis-server.ts";

const WINDOW_MS = 200;

describe("guarded store", function () {
  this.timeout(10_000);
  let redis: RedisServer;
  let client: RedisClientType;
  const lines: Record<string, unknown>[] = [];

  before(async () => {
    redis = await startRedisServer();
    client = createClient({ url: redis.url, disableOfflineQueue: true });
    client.on("error", () => undefined);
    await client.connect();
    // Commands fail at once while the client reconnects to a stopped Redis.
    await redis.stop();
  });

  after(() => {
    client.destroy();
  });

  function guarded() {
    lines.length = 0;
    const logger = pino(
      { level: "info" },
      { write: (line: string) => lines.push(JSON.parse(line)) },
    );
    return guardStore(
      new RedisStore(client, { keyPrefix: "guard-test" }),
      logger,
      WINDOW_MS,
    );
  }

  it("raises UNAVAILABLE", async () => {
    const store = guarded();
    await assert.rejects(
      store.getPresence([randomBridgeId()]),
      (error: unknown) =>
        error instanceof RelayError && error.code === "UNAVAILABLE",
    );
  });

  it("counts a burst in one line", async () => {
    const store = guarded();
    const failures = [
      ...Array.from({ length: 6 }, () => store.getPresence([randomBridgeId()])),
      ...Array.from({ length: 3 }, () => store.getState(randomBridgeId())),
    ];
    await Promise.allSettled(failures);
    await settle(WINDOW_MS + 100);

    const messages = lines.map((line) => line.msg);
    assert.deepEqual(messages, [
      "state store request failed",
      "state store requests failed after the one logged",
    ]);
    assert.equal(lines[0]?.method, "getPresence");
    assert.equal(lines[1]?.suppressed, 8);
    assert.deepEqual(lines[1]?.methods, { getPresence: 5, getState: 3 });
  });

  it("counts a burst cut short by close", async () => {
    const store = guarded();
    const failures = Array.from({ length: 3 }, () =>
      store.getPresence([randomBridgeId()]),
    );
    await Promise.allSettled(failures);
    await store.close();

    assert.deepEqual(
      lines.map((line) => [line.msg, line.suppressed]),
      [
        ["state store request failed", undefined],
        ["state store requests failed after the one logged", 2],
      ],
    );
    await settle(WINDOW_MS + 50);
    assert.equal(lines.length, 2, "nothing logged after close");
  });

  it("logs the first failure of the next window", async () => {
    const store = guarded();
    await store.getPresence([randomBridgeId()]).catch(() => undefined);
    await settle(WINDOW_MS + 50);
    await store.getState(randomBridgeId()).catch(() => undefined);

    assert.deepEqual(
      lines.map((line) => [line.msg, line.method]),
      [
        ["state store request failed", "getPresence"],
        ["state store request failed", "getState"],
      ],
    );
  });
});
