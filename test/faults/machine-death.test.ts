import assert from "node:assert/strict";
import type { Socket } from "socket.io-client";
import type {
  BridgePresence,
  BridgeState,
} from "../../client-sdk/src/protocol.ts";
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
import { light } from "../support/fixtures.ts";
import { startRedisServer, type RedisServer } from "../support/redis-server.ts";
import { startRelay, type RelayProcess } from "../support/relay-process.ts";

/** Short heartbeat, so leases expire within a test's time. */
const HEARTBEAT_MS = 400;
/** Promised bound: two heartbeats (see PresenceLease). */
const PRESENCE_BOUND_MS = 2 * HEARTBEAT_MS;
/** Allowance for the sweep itself and for scheduling on a loaded 2-core machine. */
const SLACK_MS = 1500;

const ENV = {
  PRESENCE_HEARTBEAT_MS: String(HEARTBEAT_MS),
  COMMAND_TIMEOUT_MS: "1500",
};

function signalAll(relay: RelayProcess, signal: NodeJS.Signals): void {
  for (const pid of [relay.pid, ...relay.workers().map((w) => w.pid)]) {
    try {
      process.kill(pid, signal);
    } catch {
      // Already gone: a dead primary's workers exit on their own.
    }
  }
}

async function snapshotBridge(
  url: string,
  bridgeId: string,
  on = false,
): Promise<Socket> {
  const bridge = await connectBridge(url, bridgeId);
  await requestData(bridge, "state:snapshot", {
    lights: [light("a", on)],
  });
  return bridge;
}

async function listPresence(
  app: Socket,
): Promise<Map<string, { online: boolean }>> {
  const { bridges } = await requestData<{ bridges: BridgePresence[] }>(
    app,
    "bridge:list",
    {},
  );
  return new Map(bridges.map((entry) => [entry.bridgeId, entry]));
}

describe("fault: a whole machine dies", function () {
  this.timeout(60_000);
  let redis: RedisServer;
  let survivor: RelayProcess;
  let victim: RelayProcess;
  const sockets: Socket[] = [];

  beforeEach(async () => {
    redis = await startRedisServer();
    [survivor, victim] = await Promise.all([
      startRelay({ redisUrl: redis.url, workers: 2, env: ENV }),
      startRelay({ redisUrl: redis.url, workers: 2, env: ENV }),
    ]);
  });

  afterEach(async () => {
    for (const socket of sockets.splice(0)) socket.close();
    signalAll(victim, "SIGCONT");
    await Promise.all([survivor.stop(), victim.stop("SIGKILL")]);
    await redis.stop();
  });

  it("marks its bridges offline within the lease bound", async () => {
    const stayAway = Array.from({ length: 6 }, randomBridgeId);
    const comeBack = Array.from({ length: 6 }, randomBridgeId);
    for (const bridgeId of [...stayAway, ...comeBack]) {
      sockets.push(await snapshotBridge(victim.url, bridgeId));
    }
    const app = await connectApp(survivor.url, [...stayAway, ...comeBack]);
    sockets.push(app);
    for (const bridgeId of [...stayAway, ...comeBack]) {
      await requestData(app, "bridge:subscribe", { bridgeId });
    }
    const presence = record<BridgePresence>(app, "bridge:presence");
    const offlineAt = new Map<string, number>();
    app.on("bridge:presence", (event: BridgePresence) => {
      if (!event.online) offlineAt.set(event.bridgeId, performance.now());
    });

    const killedAt = performance.now();
    signalAll(victim, "SIGKILL");
    for (const bridgeId of comeBack) {
      sockets.push(await snapshotBridge(survivor.url, bridgeId, true));
    }
    while (
      offlineAt.size < stayAway.length &&
      performance.now() - killedAt < PRESENCE_BOUND_MS + SLACK_MS * 2
    ) {
      await settle(50);
    }
    const converged = Math.max(...offlineAt.values()) - killedAt;
    console.log(
      `fault figure: machine killed, ${stayAway.length} bridges gone: offline after ${Math.round(converged)} ms (heartbeat ${HEARTBEAT_MS} ms, bound ${PRESENCE_BOUND_MS} ms + sweep)`,
    );

    assert.deepEqual([...offlineAt.keys()].sort(), [...stayAway].sort());
    assert.ok(
      converged <= PRESENCE_BOUND_MS + SLACK_MS,
      `offline after ${converged} ms`,
    );
    const listed = await listPresence(app);
    for (const bridgeId of stayAway) {
      assert.equal(listed.get(bridgeId)?.online, false, bridgeId);
    }
    for (const bridgeId of comeBack) {
      assert.equal(listed.get(bridgeId)?.online, true, bridgeId);
    }
    const flapped = presence.filter(
      (event) => comeBack.includes(event.bridgeId) && !event.online,
    );
    assert.deepEqual(flapped, []);
    // Each swept bridge goes offline at the epoch of its only connection.
    for (const event of presence.filter((item) => !item.online)) {
      assert.equal(event.epoch, 1, event.bridgeId);
    }
    const metrics = await (await fetch(`${survivor.url}/metrics`)).text();
    assert.match(metrics, /^relay_presence_swept_bridges_total 6$/m);
  });

  it("ignores a late write of a fenced connection", async () => {
    const bridgeId = randomBridgeId();
    const old = await snapshotBridge(victim.url, bridgeId, false);
    sockets.push(old);
    // A frozen machine (a VM stall, a long pause) keeps its sockets open.
    signalAll(victim, "SIGSTOP");
    const fresh = await snapshotBridge(survivor.url, bridgeId, true);
    sockets.push(fresh);
    const lateWrite = request(
      old,
      "state:changed",
      { lights: [{ id: "a", on: { on: false } }] },
      15_000,
    );
    await settle(HEARTBEAT_MS * 3);
    signalAll(victim, "SIGCONT");
    const replaced = nextEvent(old, "session:replaced", () => true, 10_000);
    const ack = await lateWrite.catch((error: unknown) => error);
    await replaced;

    const app = await connectApp(survivor.url, [bridgeId]);
    sockets.push(app);
    const state = await requestData<BridgeState>(app, "bridge:subscribe", {
      bridgeId,
    });
    assert.equal(state.online, true);
    assert.deepEqual(state.lights[0]?.on, { on: true });
    assert.equal(state.version, 2);
    assert.notDeepEqual((ack as { ok?: boolean }).ok, true);
  });

  it("restores a frozen machine's bridges when it resumes", async () => {
    const bridgeId = randomBridgeId();
    const bridge = await snapshotBridge(victim.url, bridgeId, true);
    sockets.push(bridge);
    const app = await connectApp(survivor.url, [bridgeId]);
    sockets.push(app);
    await requestData(app, "bridge:subscribe", { bridgeId });
    const offline = nextEvent<BridgePresence>(
      app,
      "bridge:presence",
      (event) => !event.online,
      PRESENCE_BOUND_MS + SLACK_MS * 2,
    );
    signalAll(victim, "SIGSTOP");
    await offline;

    const online = nextEvent<BridgePresence>(
      app,
      "bridge:presence",
      (event) => event.online,
      10_000,
    );
    const resync = nextEvent(bridge, "state:resync", () => true, 10_000);
    signalAll(victim, "SIGCONT");
    await Promise.all([online, resync]);
    const listed = await listPresence(app);
    assert.equal(listed.get(bridgeId)?.online, true);
  });
});
