import assert from "node:assert/strict";
import { connect, type Socket } from "node:net";
import { startRedisServer, type RedisServer } from "../support/redis-server.ts";
import { startRelay, type RelayProcess } from "../support/relay-process.ts";

/** The worker's limit for a first request's header is 10 s. */
const HEADERS_TIMEOUT_MS = 10_000;

/** Opens a connection, sends `text` and resolves with the ms until the server closed it. */
function timeUntilClosed(port: number, text: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const startedAt = Date.now();
    const socket: Socket = connect(port, "127.0.0.1", () => socket.write(text));
    socket.on("data", () => undefined);
    socket.on("error", () => undefined);
    socket.on("close", () => resolve(Date.now() - startedAt));
    setTimeout(() => {
      socket.destroy();
      reject(new Error("the server kept the stalled connection open"));
    }, HEADERS_TIMEOUT_MS + 10_000);
  });
}

describe("fault: clients stall their request", function () {
  this.timeout(60_000);
  let redis: RedisServer;
  let relay: RelayProcess;

  before(async () => {
    redis = await startRedisServer();
    relay = await startRelay({ redisUrl: redis.url, workers: 1 });
  });

  after(async () => {
    await relay?.stop();
    await redis?.stop();
  });

  it("closes a header that never ends", async () => {
    const partial =
      "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n";
    const closed = await Promise.all(
      Array.from({ length: 5 }, () => timeUntilClosed(relay.port, partial)),
    );
    for (const ms of closed) {
      assert.ok(ms >= HEADERS_TIMEOUT_MS - 500, `closed after ${ms} ms`);
    }
    const ready = await fetch(`${relay.url}/readyz`);
    assert.equal(ready.status, 200);
  });
});
