import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { copyFile, mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient, RESP_TYPES } from "redis";
import type { Socket } from "socket.io-client";
import type { BridgePresence } from "../../client-sdk/src/protocol.ts";
import { MAX_RECONNECT_DELAY_MS } from "../../server/redis/clients.ts";
import { RESTORED_CLAIM_GRACE_MS } from "../../server/relay/bridge-sessions.ts";
import { RedisStore } from "../../server/state/redis-store.ts";
import type { BridgeConnection } from "../../server/state/store.ts";
import {
  connectApp,
  connectBridge,
  nextEvent,
  randomBridgeId,
  record,
  request,
  requestData,
  settle,
} from "../support/clients.ts";
import { printFigure, sleep, waitUntil } from "../support/faults.ts";
import { light } from "../support/fixtures.ts";
import {
  findFreePort,
  spawnRedis,
  stopProcess,
} from "../support/redis-server.ts";
import {
  startRelay,
  type RelayOptions,
  type RelayProcess,
} from "../support/relay-process.ts";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.ts";

const KEY_PREFIX = "restored";
/** Time for a worker to reconnect to Redis and check its claims: its retries back off to 5 s. */
const RECOVERY_TIMEOUT_MS = 20_000;
/** Time that a test keeps one relay away from a restored Redis after the other relay is back, in ms. */
const LATER_RELAY_HOLD_MS = 1000;

/** Reads a bridge's presence straight from Redis. */
async function presenceOf(
  url: string,
  bridgeId: string,
): Promise<BridgeConnection | null> {
  const client = createClient({ url });
  client.on("error", () => undefined);
  await client.connect();
  try {
    const store = new RedisStore(client, { keyPrefix: KEY_PREFIX });
    const [record] = await store.getPresence([bridgeId]);
    return record?.connection ?? null;
  } finally {
    client.destroy();
  }
}

/** Sends a snapshot of one light, as a bridge does when asked to resync. */
async function sendSnapshot(bridge: Socket, on: boolean): Promise<void> {
  await requestData(bridge, "state:snapshot", { lights: [light("a", on)] });
}

describe("fault: Redis restored from an older copy", function () {
  this.timeout(90_000);
  let dir = "";
  let port = 0;
  let redis: ChildProcess | undefined;
  let relay: RelayProcess | undefined;
  /** Relays started by one test besides `relay`, stopped after all tests. */
  const otherRelays: RelayProcess[] = [];
  /** Proxies started by one test, closed after all tests. */
  const proxies: TcpProxy[] = [];
  const sockets: Socket[] = [];
  /** The RDB file that the running Redis loaded and saves to, in `dir`. */
  let dbFile = "dump.rdb";
  let restarts = 0;

  /** Saves Redis's data and keeps a copy of it as `copy`, in `dir`. */
  async function saveCopy(copy: string): Promise<void> {
    const admin = createClient({ url: `redis://127.0.0.1:${port}` });
    await admin.connect();
    await admin.sendCommand(["SAVE"]);
    admin.destroy();
    await copyFile(join(dir, dbFile), join(dir, copy));
  }

  /**
   * Reads a bridge's presence from the RDB copy `copy`, loaded into a
   * separate Redis, so that the running relays cannot change it first.
   */
  async function presenceInCopy(
    copy: string,
    bridgeId: string,
  ): Promise<BridgeConnection | null> {
    const readerDir = join(dir, "copy-reader");
    await mkdir(readerDir, { recursive: true });
    await copyFile(join(dir, copy), join(readerDir, copy));
    const readerPort = await findFreePort();
    const reader = await spawnRedis(readerPort, readerDir, [
      "--dbfilename",
      copy,
    ]);
    try {
      return await presenceOf(`redis://127.0.0.1:${readerPort}`, bridgeId);
    } finally {
      await stopProcess(reader);
    }
  }

  /** Restarts Redis from the RDB copy `copy`, or empty without one. */
  async function restartRedis(copy?: string): Promise<void> {
    await stopProcess(redis!);
    restarts += 1;
    dbFile = copy ?? `empty-${restarts}.rdb`;
    redis = await spawnRedis(port, dir, ["--dbfilename", dbFile]);
  }

  /** Returns the serialized value of every key matching one of `patterns`, by key. */
  async function dumpKeys(patterns: string[]): Promise<Map<string, Buffer>> {
    const admin = createClient({ url: `redis://127.0.0.1:${port}` });
    await admin.connect();
    const dumps = new Map<string, Buffer>();
    try {
      const binary = admin.withTypeMapping({
        [RESP_TYPES.BLOB_STRING]: Buffer,
      });
      for (const pattern of patterns) {
        for await (const keys of admin.scanIterator({ MATCH: pattern })) {
          for (const key of keys) {
            const dump = await binary.dump(key);
            if (dump !== null) dumps.set(key, dump);
          }
        }
      }
    } finally {
      admin.destroy();
    }
    return dumps;
  }

  /** Writes back keys that `dumpKeys` returned, replacing their current values. */
  async function restoreKeys(dumps: Map<string, Buffer>): Promise<void> {
    const admin = createClient({ url: `redis://127.0.0.1:${port}` });
    await admin.connect();
    try {
      for (const [key, dump] of dumps) {
        await admin.restore(key, 0, dump, { REPLACE: true });
      }
    } finally {
      admin.destroy();
    }
  }

  /** Waits until no socket holds the claim of `bridgeId`. */
  async function waitUntilOffline(
    bridgeId: string,
    description: string,
    timeoutMs = 5000,
  ): Promise<void> {
    const url = `redis://127.0.0.1:${port}`;
    await waitUntil(
      description,
      async () => (await presenceOf(url, bridgeId)) === null,
      timeoutMs,
    );
  }

  /**
   * Restarts Redis from `copy`, or empty without one, and returns the ms
   * from Redis's answer to `bridge` receiving `state:resync`.
   */
  async function restartAwaitingResync(
    bridge: Socket,
    copy?: string,
  ): Promise<number> {
    const resync = nextEvent(
      bridge,
      "state:resync",
      () => true,
      RECOVERY_TIMEOUT_MS,
    );
    await restartRedis(copy);
    const restoredAt = Date.now();
    await resync;
    return Date.now() - restoredAt;
  }

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "relay-test-restore-"));
    port = await findFreePort();
    redis = await spawnRedis(port, dir);
    relay = await startRelay(relayOptions());
  });

  /** Options of a relay with one worker, so that a bridge on it is held by that worker's server ID. */
  function relayOptions(): RelayOptions {
    return {
      redisUrl: `redis://127.0.0.1:${port}`,
      workers: 1,
      env: { REDIS_KEY_PREFIX: KEY_PREFIX },
    };
  }

  after(async () => {
    for (const socket of sockets) socket.close();
    await Promise.all(otherRelays.map((other) => other.stop()));
    await relay?.stop();
    await Promise.all(proxies.map((proxy) => proxy.close()));
    if (redis !== undefined) await stopProcess(redis);
    await rm(dir, { recursive: true, force: true });
  });

  it("keeps a bridge at a restored epoch", async () => {
    const url = `redis://127.0.0.1:${port}`;
    const bridgeId = randomBridgeId();
    // A first connection makes the second one's claim epoch 2.
    const first = await connectBridge(relay!.url, bridgeId);
    first.close();
    await waitUntilOffline(bridgeId, "the first connection released");
    const bridge = await connectBridge(relay!.url, bridgeId);
    sockets.push(bridge);
    await sendSnapshot(bridge, true);
    const replaced = record(bridge, "session:replaced");
    assert.equal((await presenceOf(url, bridgeId))?.epoch, 2);

    await saveCopy("older.rdb");

    // Back empty: the worker claims the bridge again, at epoch 1.
    await restartAwaitingResync(bridge);
    await sendSnapshot(bridge, false);
    assert.equal((await presenceOf(url, bridgeId))?.epoch, 1);

    // Back from the older copy, which names the same socket at epoch 2.
    const resyncMs = await restartAwaitingResync(bridge, "older.rdb");
    await sendSnapshot(bridge, true);

    assert.deepEqual(replaced, []);
    assert.equal(bridge.connected, true);
    const restored = await presenceOf(url, bridgeId);
    assert.equal(restored?.socketId, bridge.id);
    assert.equal(restored?.epoch, 2);
    printFigure(
      `Redis restored from an older copy: the bridge kept its connection and was asked to resync ${resyncMs} ms after Redis answered`,
    );

    // Its release finds its own claim, so the bridge does not stay online.
    bridge.close();
    await waitUntilOffline(bridgeId, "the bridge offline once it disconnected");
  });

  it("takes over a claim of a gone socket", async () => {
    const url = `redis://127.0.0.1:${port}`;
    const bridgeId = randomBridgeId();
    const first = await connectBridge(relay!.url, bridgeId);
    await sendSnapshot(first, true);
    await saveCopy("gone-socket.rdb");
    first.close();
    await waitUntilOffline(bridgeId, "the first connection released");
    const bridge = await connectBridge(relay!.url, bridgeId);
    sockets.push(bridge);
    await sendSnapshot(bridge, false);
    const replaced = record(bridge, "session:replaced");

    // The copy names the first socket, which this worker no longer has.
    await restartAwaitingResync(bridge, "gone-socket.rdb");
    await sendSnapshot(bridge, false);

    assert.deepEqual(replaced, []);
    assert.equal(bridge.connected, true);
    const restored = await presenceOf(url, bridgeId);
    assert.equal(restored?.socketId, bridge.id);
    assert.equal(restored?.epoch, 2);
    bridge.close();
    await waitUntilOffline(bridgeId, "the bridge offline once it disconnected");
  });

  it("keeps a bridge that moved to another server", async () => {
    const url = `redis://127.0.0.1:${port}`;
    const bridgeId = randomBridgeId();
    const other = await startRelay(relayOptions());
    otherRelays.push(other);
    const otherServerId = other.workers()[0]?.serverId;
    const first = await connectBridge(relay!.url, bridgeId);
    await sendSnapshot(first, true);
    await saveCopy("moved.rdb");
    first.close();
    await waitUntilOffline(bridgeId, "the first connection released");
    const bridge = await connectBridge(other.url, bridgeId);
    sockets.push(bridge);
    await sendSnapshot(bridge, false);
    const replaced = record(bridge, "session:replaced");

    // The copy names the first socket, on the first relay, at epoch 1,
    // while the bridge's session on the other relay is at epoch 2.
    await restartAwaitingResync(bridge, "moved.rdb");
    await sendSnapshot(bridge, false);

    assert.deepEqual(replaced, []);
    assert.equal(bridge.connected, true);
    const restored = await presenceOf(url, bridgeId);
    assert.equal(restored?.serverId, otherServerId);
    assert.equal(restored?.socketId, bridge.id);
    bridge.close();
    await waitUntilOffline(bridgeId, "the bridge offline once it disconnected");
  });

  it("runs a check that arrives before Redis", async () => {
    const url = `redis://127.0.0.1:${port}`;
    const bridgeId = randomBridgeId();
    // Each relay reaches Redis through its own proxy, so that the test
    // decides the order of their reconnects.
    const [askingProxy, namedProxy] = await Promise.all([
      startTcpProxy(port),
      startTcpProxy(port),
    ]);
    proxies.push(askingProxy, namedProxy);
    const [asking, named] = await Promise.all([
      startRelay({ ...relayOptions(), redisUrl: askingProxy.redisUrl }),
      startRelay({ ...relayOptions(), redisUrl: namedProxy.redisUrl }),
    ]);
    otherRelays.push(asking, named);
    const namedServerId = named.workers()[0]?.serverId;
    assert.ok(namedServerId !== undefined, "the named relay's server ID");
    const first = await connectBridge(named.url, bridgeId);
    await sendSnapshot(first, true);
    // The bridge's claim and the named server's connection index.
    const copy = await dumpKeys([
      `${KEY_PREFIX}:{${bridgeId}}:*`,
      `${KEY_PREFIX}:server:{${namedServerId}}:*`,
    ]);
    first.close();
    await waitUntilOffline(bridgeId, "the first connection released");
    const bridge = await connectBridge(asking.url, bridgeId);
    sockets.push(bridge);
    await sendSnapshot(bridge, false);
    const replaced = record(bridge, "session:replaced");

    // The older copy's keys come back without a restart, so no connection
    // drops yet. They name the first socket, on the named relay.
    await restoreKeys(copy);
    // The named relay's main connection drops and reconnects into a
    // handshake that gets no reply, so it is not ready. Its subscriber,
    // which sent node-redis's lowercase "ssubscribe", stays up.
    namedProxy.cutAllBut("ssubscribe");
    const checkFailed = named.waitForLog(
      (line) =>
        line.bridgeId === bridgeId &&
        line.msg.startsWith("could not check a bridge claim"),
      RECOVERY_TIMEOUT_MS,
    );
    const resync = nextEvent(
      bridge,
      "state:resync",
      () => true,
      RECOVERY_TIMEOUT_MS,
    );
    // The asking relay reconnects, revalidates and sends checkClaim to the
    // named relay, whose reply fails, because it goes out on the main
    // connection.
    await askingProxy.cut();
    await askingProxy.restore();
    await checkFailed;
    namedProxy.passReplies();
    const namedBackAt = Date.now();
    await resync;
    const resyncMs = Date.now() - namedBackAt;
    await sendSnapshot(bridge, false);

    assert.deepEqual(replaced, []);
    assert.equal(bridge.connected, true);
    const restored = await presenceOf(url, bridgeId);
    assert.equal(restored?.socketId, bridge.id);
    // Without a deferred check, the resync waits for the asking relay's
    // next check, 1 s after its first.
    assert.ok(
      resyncMs < 500,
      `state:resync ${resyncMs} ms after the named relay's Redis came back`,
    );
    printFigure(
      `a claim check that arrived before the named relay's Redis connection: the bridge was asked to resync ${resyncMs} ms after that connection came back`,
    );
    bridge.close();
    await waitUntilOffline(bridgeId, "the bridge offline once it disconnected");
  });

  it("keeps a moved bridge online throughout", async () => {
    const url = `redis://127.0.0.1:${port}`;
    const movedId = randomBridgeId();
    const closedId = randomBridgeId();
    const addedId = randomBridgeId();
    // Each relay reaches Redis through its own proxy, so that the test
    // decides the order of their reconnects.
    const [liveProxy, namedProxy] = await Promise.all([
      startTcpProxy(port),
      startTcpProxy(port),
    ]);
    proxies.push(liveProxy, namedProxy);
    const options = relayOptions();
    options.env = { ...options.env, PRESENCE_HEARTBEAT_MS: "2000" };
    const [live, named] = await Promise.all([
      startRelay({ ...options, redisUrl: liveProxy.redisUrl }),
      startRelay({ ...options, redisUrl: namedProxy.redisUrl }),
    ]);
    otherRelays.push(live, named);
    const liveServerId = live.workers()[0]?.serverId;
    assert.ok(liveServerId !== undefined, "the live relay's server ID");
    // In the copy, both bridges are on the named relay.
    const first = await connectBridge(named.url, movedId);
    const closed = await connectBridge(named.url, closedId);
    await Promise.all([sendSnapshot(first, true), sendSnapshot(closed, true)]);
    await saveCopy("moved-later.rdb");
    first.close();
    closed.close();
    await waitUntilOffline(movedId, "the first connection released");
    await waitUntilOffline(closedId, "the closed bridge released");
    // Since the copy, one bridge moved to the live relay and another one
    // connected there for the first time.
    const moved = await connectBridge(live.url, movedId);
    const added = await connectBridge(live.url, addedId);
    sockets.push(moved, added);
    await Promise.all([sendSnapshot(moved, false), sendSnapshot(added, false)]);
    // The app is on the named relay, which is back first, so it gets that
    // relay's broadcasts while the live relay is away.
    const bridgeIds = [movedId, closedId, addedId];
    const app = await connectApp(named.url, bridgeIds);
    sockets.push(app);
    for (const bridgeId of bridgeIds) {
      await requestData(app, "bridge:subscribe", { bridgeId });
    }
    const presences = record<BridgePresence>(app, "bridge:presence");
    const replaced = record(moved, "session:replaced");
    const resync = nextEvent(
      moved,
      "state:resync",
      () => true,
      RECOVERY_TIMEOUT_MS,
    );

    // The live relay stays away until 1 s after the named relay's Redis
    // connection is back. Meanwhile the named relay revalidates and finds
    // the restored claims of its first and its closed socket.
    await liveProxy.cut();
    await restartRedis("moved-later.rdb");
    const restoredAt = Date.now();
    await named.waitForLog(
      (line) =>
        line.msg === "redis connection restored" && line.connection === "main",
      RECOVERY_TIMEOUT_MS,
    );
    const heldAt = Date.now();
    await named.waitForLog(
      (line) => line.msg.startsWith("found restored claims of gone sockets"),
      LATER_RELAY_HOLD_MS,
    );
    // The named relay holds the moved bridge's restored claim, and the
    // bridge is connected to the live relay.
    const held = await request(app, "light:set", {
      bridgeId: movedId,
      lightId: "a",
      change: { on: { on: true } },
    });
    await sleep(Math.max(0, LATER_RELAY_HOLD_MS - (Date.now() - heldAt)));
    await liveProxy.restore();
    await resync;
    const resyncMs = Date.now() - restoredAt;
    await waitUntil(
      "the added bridge claimed again",
      async () => (await presenceOf(url, addedId))?.socketId === added.id,
      RECOVERY_TIMEOUT_MS,
    );
    const addedOfflineMs = Date.now() - restoredAt;
    await waitUntilOffline(
      closedId,
      "the closed bridge's restored claim released",
      RECOVERY_TIMEOUT_MS,
    );
    const closedOnlineMs = Date.now() - restoredAt;
    await settle();

    const offlineEvents = (bridgeId: string): BridgePresence[] =>
      presences.filter((event) => event.bridgeId === bridgeId && !event.online);
    assert.deepEqual(offlineEvents(movedId), [], "moved bridge offline events");
    assert.deepEqual(offlineEvents(addedId), [], "added bridge offline events");
    assert.equal(offlineEvents(closedId).length, 1, "closed bridge offline");
    assert.deepEqual(replaced, []);
    assert.equal(
      held.ok ? "ok" : held.error.code,
      "UNAVAILABLE",
      "a command to the moved bridge while its claim was held",
    );
    assert.equal(moved.connected, true);
    const restored = await presenceOf(url, movedId);
    assert.equal(restored?.serverId, liveServerId);
    assert.equal(restored?.socketId, moved.id);
    // The named relay is back within its reconnect delay, and releases
    // the claim one grace after its revalidation. The extra second covers
    // that revalidation and the polling.
    const closedBoundMs =
      MAX_RECONNECT_DELAY_MS + RESTORED_CLAIM_GRACE_MS + 1000;
    assert.ok(
      closedOnlineMs < closedBoundMs,
      `the closed bridge read online ${closedOnlineMs} ms, bound ${closedBoundMs} ms`,
    );
    printFigure(
      `a bridge that moved to a relay that reconnected ${LATER_RELAY_HOLD_MS} ms after the other: no offline event, asked to resync ${resyncMs} ms after Redis answered; a bridge connected after the copy read offline for ${addedOfflineMs} ms; a closed bridge read online for ${closedOnlineMs} ms`,
    );
  });

  it("releases a restored claim of no session", async () => {
    const bridgeId = randomBridgeId();
    const bridge = await connectBridge(relay!.url, bridgeId);
    const closedSocketId = bridge.id;
    await sendSnapshot(bridge, true);
    await saveCopy("closed.rdb");
    bridge.close();
    await waitUntilOffline(bridgeId, "the connection released");
    assert.equal(
      (await presenceInCopy("closed.rdb", bridgeId))?.socketId,
      closedSocketId,
      "the copy names the closed socket",
    );

    // The copy names the closed socket, and the worker's lease is alive.
    await restartRedis("closed.rdb");
    const restoredAt = Date.now();
    await waitUntilOffline(
      bridgeId,
      "the restored claim released",
      RECOVERY_TIMEOUT_MS,
    );
    printFigure(
      `Redis restored from an older copy: a claim of a closed socket was released ${Date.now() - restoredAt} ms after Redis answered`,
    );
  });

  it("sweeps no live server's bridges", async () => {
    const url = `redis://127.0.0.1:${port}`;
    // Renewals every 2 s and sweep checks every 1 s: a restart of Redis
    // rarely fails a renewal, so without the hold a check finds the other
    // server's restored lease expired before that server renews it.
    const options = relayOptions();
    options.env = { ...options.env, PRESENCE_HEARTBEAT_MS: "4000" };
    const [first, second] = await Promise.all([
      startRelay(options),
      startRelay(options),
    ]);
    otherRelays.push(first, second);
    const bridgeIds = [randomBridgeId(), randomBridgeId()];
    const bridges = await Promise.all([
      connectBridge(first.url, bridgeIds[0]!),
      connectBridge(second.url, bridgeIds[1]!),
    ]);
    sockets.push(...bridges);
    await saveCopy("expired-leases.rdb");
    // The copy's leases expire 6 s (1.5 heartbeats) after they were renewed.
    await sleep(6500);

    const sweeps = (): number =>
      [...first.logs, ...second.logs].filter(
        (line) =>
          line.msg ===
          "presence lease expired, bridges of that server marked offline",
      ).length;
    const sweepsBefore = sweeps();
    await restartRedis("expired-leases.rdb");
    await sleep(4000);

    assert.equal(sweeps() - sweepsBefore, 0, "sweeps after the restore");
    for (const [index, bridgeId] of bridgeIds.entries()) {
      assert.equal(
        (await presenceOf(url, bridgeId))?.socketId,
        bridges[index]!.id,
      );
    }
  });
});
