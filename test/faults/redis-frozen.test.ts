import assert from "node:assert/strict";
import { createClient } from "redis";
import {
  printFigure,
  startRelayOnRedis,
  stopRelayOnRedis,
  waitUntil,
} from "../support/faults.ts";
import type { RedisServer } from "../support/redis-server.ts";
import type { RelayProcess } from "../support/relay-process.ts";

/** Duration of the Redis pause of every client's commands, in ms. */
const PAUSE_MS = 4000;

describe("fault: Redis accepts connections but does not respond", function () {
  this.timeout(30_000);
  let redis: RedisServer;
  let relay: RelayProcess;

  before(async () => {
    ({ redis, relay } = await startRelayOnRedis({ workers: 1 }));
  });

  after(() => stopRelayOnRedis({ relay, redis }));

  it("fails readiness within its timeout", async () => {
    const admin = createClient({ url: redis.url });
    await admin.connect();
    try {
      await admin.sendCommand(["CLIENT", "PAUSE", String(PAUSE_MS), "ALL"]);
      const startedAt = Date.now();
      const ready = await fetch(`${relay.url}/readyz`, {
        signal: AbortSignal.timeout(PAUSE_MS + 2000),
      });
      const answeredMs = Date.now() - startedAt;
      printFigure(
        `Redis paused ${PAUSE_MS} ms: /readyz answered ${ready.status} after ${answeredMs} ms`,
      );
      assert.equal(ready.status, 503);
      assert.deepEqual(await ready.json(), { status: "unavailable" });
      assert.ok(answeredMs < PAUSE_MS / 2, `answered after ${answeredMs} ms`);
    } finally {
      await admin.quit();
    }
    await waitUntil(
      "readiness after the pause",
      async () => (await fetch(`${relay.url}/readyz`)).status === 200,
      PAUSE_MS + 5000,
      200,
    );
  });
});
