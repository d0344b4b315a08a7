import assert from "node:assert/strict";
import { isDeepStrictEqual } from "node:util";
import { createClient, type RedisClientType } from "redis";
import { startAppView, type AppView } from "../support/app-view.ts";
import { randomBridgeId } from "../support/clients.ts";
import { startFakeBridge, type FakeBridge } from "../support/fake-bridge.ts";
import {
  outcomeOf,
  printFigure,
  startRelayOnRedis,
  stopRelayOnRedis,
  waitUntil,
} from "../support/faults.ts";
import type { RedisServer } from "../support/redis-server.ts";
import type { RelayProcess } from "../support/relay-process.ts";

async function readiness(url: string): Promise<number> {
  return (await fetch(`${url}/readyz`)).status;
}

describe("fault: Redis rejects writes while reachable", function () {
  this.timeout(60_000);
  let redis: RedisServer;
  let admin: RedisClientType;
  let relay: RelayProcess;
  const clients: { close(): void }[] = [];

  before(async () => {
    ({ redis, relay } = await startRelayOnRedis({ workers: 1 }));
    admin = createClient({ url: redis.url });
    admin.on("error", () => undefined);
    await admin.connect();
  });

  after(async () => {
    for (const client of clients) client.close();
    await admin?.close();
    await stopRelayOnRedis({ relay, redis });
  });

  it("resyncs the bridge once writes work again", async () => {
    const bridgeId = randomBridgeId();
    const bridge: FakeBridge = await startFakeBridge({
      url: relay.url,
      bridgeId,
    });
    const app: AppView = await startAppView({
      url: relay.url,
      bridgeIds: [bridgeId],
    });
    clients.push(bridge, app);
    await app.subscribe([bridgeId]);

    // Out of memory with no eviction: Redis answers reads, rejects writes.
    await admin.configSet("maxmemory-policy", "noeviction");
    await admin.configSet("maxmemory", "1");
    const report = await outcomeOf(
      bridge.switchLight({ id: "a", on: { on: true } }),
    );
    assert.equal(report.code, "UNAVAILABLE", "a report while writes fail");
    assert.equal(
      await readiness(relay.url),
      503,
      "readiness while writes fail",
    );

    await admin.configSet("maxmemory", "0");
    const restoredAt = Date.now();
    await waitUntil(
      "readiness back",
      async () => (await readiness(relay.url)) === 200,
      5000,
    );
    const syncedMs = await waitUntil(
      "the bridge's lost report stored through a snapshot",
      () =>
        bridge.syncs.some(
          (sync) => sync.trigger === "resync" && sync.at > restoredAt,
        ),
      10_000,
    );
    const currentMs = await waitUntil(
      "the app's copy current",
      () =>
        isDeepStrictEqual(app.sortedLights(bridgeId), bridge.sortedLights()),
      5000,
    );
    assert.equal(app.sortedLights(bridgeId)[0]?.on.on, true);
    printFigure(
      `redis rejects writes: the lost report stored ${syncedMs} ms after writes worked again, the app current ${currentMs} ms later`,
    );
  });

  it("releases a bridge once writes work again", async () => {
    const bridgeId = randomBridgeId();
    const bridge: FakeBridge = await startFakeBridge({
      url: relay.url,
      bridgeId,
    });
    const metaKey = `relay:{${bridgeId}}:meta`;
    assert.notEqual(await admin.hGet(metaKey, "socket"), null);

    // Every write fails for want of a replica, deletes included, so the
    // release on disconnect fails. The connection to Redis stays up.
    await admin.configSet("min-replicas-to-write", "1");
    bridge.close();
    await relay.waitForLog(
      (line) => line.msg === "could not release the bridge's claim",
    );
    await admin.configSet("min-replicas-to-write", "0");

    const releasedMs = await waitUntil(
      "the bridge released",
      async () => (await admin.hGet(metaKey, "socket")) === null,
      5000,
    );
    printFigure(
      `redis rejects writes: a failed release went through ${releasedMs} ms after writes worked again`,
    );
  });
});
