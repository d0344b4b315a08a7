import assert from "node:assert/strict";
import { createClient } from "redis";
import type { Socket } from "socket.io-client";
import type { Ack, Light } from "../../client-sdk/src/protocol.ts";
import {
  connectApp,
  connectBridge,
  randomBridgeId,
  record,
  request,
  requestData,
} from "../support/clients.ts";
import { answerLightSet, lightMap } from "../support/fake-bridge.ts";
import {
  printFigure,
  sleep,
  waitForReadiness,
  waitUntil,
} from "../support/faults.ts";
import { startRedisServer, type RedisServer } from "../support/redis-server.ts";
import { startRelay, type RelayProcess } from "../support/relay-process.ts";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.ts";

/** Key prefix of the relays, the default of REDIS_KEY_PREFIX. */
const KEY_PREFIX = "relay";
const WINDOW_KEY = `${KEY_PREFIX}:data-loss-window`;
/** DATA_LOSS_WINDOW_MS of the worker: twice the 5 s maximum reconnect delay. */
const WINDOW_MS = 10_000;
/** How long the test sends commands while the bridge's relay stays cut off. */
const CUT_COMMANDS_MS = 1500;
/** Time between those commands, in ms: about 25 a second. */
const COMMAND_GAP_MS = 40;

/** Sends `light:set` from `app` and returns `ok` or the error code. */
async function commandCode(
  app: Socket,
  bridgeId: string,
  lightId: string,
): Promise<string> {
  const ack: Ack<{ light: Light }> = await request(app, "light:set", {
    bridgeId,
    lightId,
    change: { on: { on: false } },
  });
  return ack.ok ? "ok" : ack.error.code;
}

/** Returns how often each code occurs in `codes`. */
function tally(codes: string[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const code of codes) counts[code] = (counts[code] ?? 0) + 1;
  return counts;
}

describe("fault: Redis restarted empty while a bridge stays connected", function () {
  this.timeout(90_000);
  let redis: RedisServer;
  let proxy: TcpProxy;
  /** The app's relay, on Redis directly. */
  let appRelay: RelayProcess;
  /** The bridge's relay, behind the proxy that the test cuts. */
  let bridgeRelay: RelayProcess;
  const sockets: Socket[] = [];

  before(async () => {
    redis = await startRedisServer();
    proxy = await startTcpProxy(redis.port);
    appRelay = await startRelay({ redisUrl: redis.url, workers: 1 });
    bridgeRelay = await startRelay({ redisUrl: proxy.redisUrl, workers: 1 });
  });
  after(async () => {
    for (const socket of sockets) socket.close();
    await Promise.all([appRelay?.stop(), bridgeRelay?.stop()]);
    await proxy?.close();
    await redis?.stop();
  });

  it("answers UNAVAILABLE until the bridge is claimed and resynced", async () => {
    const bridgeId = randomBridgeId();
    const neverId = randomBridgeId();
    const disconnectedId = randomBridgeId();
    // A raw bridge, so that the test decides when it sends the snapshot that
    // `state:resync` requests.
    const bridge = await connectBridge(bridgeRelay.url, bridgeId);
    sockets.push(bridge);
    const lights = lightMap("a", "b");
    answerLightSet(bridge, lights);
    const resyncs = record(bridge, "state:resync");
    await requestData(bridge, "state:snapshot", {
      lights: [...lights.values()],
    });
    const app = await connectApp(appRelay.url, [
      bridgeId,
      neverId,
      disconnectedId,
    ]);
    sockets.push(app);
    assert.equal(await commandCode(app, bridgeId, "a"), "ok", "before");
    assert.equal(
      await commandCode(app, neverId, "a"),
      "BRIDGE_OFFLINE",
      "a bridge that never connected, before the restart",
    );

    // Redis restarts empty. The app's relay reconnects at once, and the
    // bridge's relay stays cut off, so the bridge's claim stays lost.
    await proxy.cut();
    await redis.restart();
    const restartedAt = Date.now();
    await appRelay.waitForLog(
      (line) => line.msg.startsWith("Redis lost its data"),
      15_000,
    );
    const readyMs = await waitForReadiness(
      appRelay.url,
      [appRelay.workers()[0]!.serverId],
      200,
      15_000,
    );

    const codes: string[] = [];
    const sendingUntil = Date.now() + CUT_COMMANDS_MS;
    while (Date.now() < sendingUntil) {
      codes.push(await commandCode(app, bridgeId, "a"));
      await sleep(COMMAND_GAP_MS);
    }
    const counts = tally(codes);
    assert.equal(counts.BRIDGE_OFFLINE, undefined, "no BRIDGE_OFFLINE");
    assert.equal(counts.UNAVAILABLE, codes.length, JSON.stringify(counts));
    assert.equal(
      await commandCode(app, neverId, "a"),
      "UNAVAILABLE",
      "a bridge that never connected, inside the window",
    );

    // A bridge that connects and disconnects after the restart has a
    // record, so it reads offline inside the window as well.
    const disconnected = await connectBridge(appRelay.url, disconnectedId);
    await requestData(disconnected, "state:snapshot", { lights: [] });
    disconnected.close();
    await waitUntil(
      "the disconnected bridge released",
      async () =>
        (await commandCode(app, disconnectedId, "a")) === "BRIDGE_OFFLINE",
      5000,
    );

    // The bridge's relay comes back, claims the bridge again and sends
    // `state:resync`, whose snapshot the bridge holds back for now.
    await proxy.restore();
    const restoredAt = Date.now();
    await waitUntil("state:resync sent", () => resyncs.length > 0, 15_000);
    const claimedAfterRestoreMs = Date.now() - restoredAt;
    assert.equal(
      await commandCode(app, bridgeId, "a"),
      "UNAVAILABLE",
      "a known light while the resync snapshot is pending",
    );

    await requestData(bridge, "state:snapshot", {
      lights: [...lights.values()],
    });
    assert.equal(await commandCode(app, bridgeId, "a"), "ok", "after resync");
    assert.equal(
      await commandCode(app, bridgeId, "no-such-light"),
      "NOT_FOUND",
      "an unknown light after the resync",
    );

    // Once the window ends, a bridge without a record is offline again.
    const admin = createClient({ url: redis.url });
    await admin.connect();
    try {
      const ttlMs = await admin.pTTL(WINDOW_KEY);
      assert.ok(ttlMs > 0, `window TTL ${ttlMs} ms`);
      assert.ok(ttlMs <= WINDOW_MS, `window TTL ${ttlMs} ms`);
      await waitUntil(
        "the window's end",
        async () => (await admin.exists(WINDOW_KEY)) === 0,
        WINDOW_MS + 2000,
        100,
      );
    } finally {
      await admin.close();
    }
    assert.equal(
      await commandCode(app, neverId, "a"),
      "BRIDGE_OFFLINE",
      "a bridge that never connected, after the window",
    );
    printFigure(
      `redis restarted empty with the bridge's relay cut off: the app's relay ready ${readyMs} ms after the restart; ` +
        `${codes.length} commands in ${CUT_COMMANDS_MS} ms, ${JSON.stringify(counts)}; ` +
        `bridge claimed again ${claimedAfterRestoreMs} ms after its relay's path came back (${restoredAt - restartedAt} ms after the restart)`,
    );
  });
});
