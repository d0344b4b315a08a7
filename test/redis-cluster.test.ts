import assert from "node:assert/strict";
import {
  createClient,
  createCluster,
  type RedisClientType,
  type RedisClusterType,
} from "redis";
import type { Socket } from "socket.io-client";
import type {
  BridgePresence,
  BridgeState,
  Light,
  LightsChangedEvent,
} from "../client-sdk/src/protocol.ts";
import {
  connectApp,
  connectBridge,
  nextEvent,
  randomBridgeId,
  record,
  request,
  requestData,
} from "./support/clients.ts";
import { answerLightSet, untypedLightMap } from "./support/fake-bridge.ts";
import { readinessByWorker, sleep, waitUntil } from "./support/faults.ts";
import { light } from "./support/fixtures.ts";
import { send } from "./support/http.ts";
import {
  bridgeIdsOn,
  bridgeSlot,
  moveSlot,
  slotOwner,
  startRedisCluster,
  waitForSettledSlots,
  type RedisCluster,
} from "./support/redis-cluster.ts";
import { findFreePort } from "./support/redis-server.ts";
import {
  launchRelay,
  startRelay,
  type LogLine,
  type RelayProcess,
} from "./support/relay-process.ts";

const MASTERS = 3;
/** Bridges whose slots move while their apps send commands. */
const LOADED_BRIDGES = 20;
/** Pause after each of those commands, in ms. */
const LOADED_COMMAND_GAP_MS = 10;
/** The relay's default REDIS_KEY_PREFIX. */
const KEY_PREFIX = "relay";
/** pino's level number of `error`. */
const ERROR_LEVEL = 50;

/** A direct client of one master, which reaches only the keys of its own slots. */
interface MasterClient {
  port: number;
  client: RedisClientType;
}

/** Returns the keys matching `pattern` on one master. */
function keysOn(master: MasterClient, pattern: string): Promise<string[]> {
  return master.client.keys(pattern);
}

/**
 * Returns true for a fault of node-redis 6.4 seen in CI runs of the slot
 * moves below: a subscriber's push handler, or once its error reply
 * handler, threw a TypeError reading the head of its empty reply queue.
 * The client then resets that connection and subscribes again, and every
 * command of the first such run succeeded.
 * NOTE: a likely cause, read from node-redis 6.4's `#onPush` and not
 * reproduced: a SUNSUBSCRIBE that Redis sends by itself for a moved slot
 * is taken as the confirmation of whatever command waits at that moment,
 * so the real confirmation later finds the queue empty.
 */
function isPushHandlerFault(line: LogLine): boolean {
  const error = line.err as { type?: string; stack?: string } | undefined;
  const stack = error?.stack ?? "";
  return (
    line.msg === "redis connection error" &&
    line.connection === "subscriber" &&
    error?.type === "TypeError" &&
    (stack.includes("RedisCommandsQueue.#onPush") ||
      stack.includes("RedisCommandsQueue.#onErrorReply"))
  );
}

async function bridgeList(app: Socket): Promise<BridgePresence[]> {
  const { bridges } = await requestData<{ bridges: BridgePresence[] }>(
    app,
    "bridge:list",
    {},
  );
  return bridges;
}

describe("Redis Cluster: two relays on three masters", function () {
  this.timeout(60_000);
  let cluster: RedisCluster;
  let masters: MasterClient[] = [];
  /** A cluster client, which reaches every key. */
  let probe: RedisClusterType | undefined;
  /** Bridge IDs by master, in the order of `masters`, one per test that needs one. */
  let bridgeIds: string[][] = [];
  let relays: RelayProcess[] = [];
  const sockets: Socket[] = [];
  const track = (socket: Socket): Socket => {
    sockets.push(socket);
    return socket;
  };
  /** The relay the bridges connect to, and the one the apps connect to. */
  const bridgeSide = (): RelayProcess => relays[0]!;
  const appSide = (): RelayProcess => relays[1]!;

  before(async () => {
    cluster = await startRedisCluster({ masters: MASTERS });
    for (const [index, url] of cluster.urls.entries()) {
      const client: RedisClientType = createClient({ url });
      client.on("error", () => undefined);
      await client.connect();
      masters.push({ port: cluster.ports[index]!, client });
    }
    probe = createCluster({ rootNodes: cluster.urls.map((url) => ({ url })) });
    probe.on("error", () => undefined);
    await probe.connect();
    bridgeIds = [];
    for (const master of masters) {
      bridgeIds.push(await bridgeIdsOn(masters[0]!.client, master.port, 2));
    }
    relays = await Promise.all([
      startRelay({ redisClusterNodes: cluster.urls, workers: 2 }),
      startRelay({ redisClusterNodes: cluster.urls, workers: 2 }),
    ]);
  });
  afterEach(() => {
    for (const socket of sockets.splice(0)) socket.close();
  });
  after(async () => {
    await Promise.all(relays.map((relay) => relay.stop()));
    await Promise.all(masters.map(({ client }) => client.close()));
    masters = [];
    await probe?.close();
    await cluster?.stop();
  });

  it("reports ready on every worker", async () => {
    for (const relay of relays) {
      const serverIds = relay.workers().map((worker) => worker.serverId);
      const statuses = await readinessByWorker(relay.url, serverIds);
      for (const serverId of serverIds) {
        assert.equal(statuses.get(serverId), 200, `worker ${serverId}`);
      }
    }
  });

  it("checks writes on every master", async () => {
    assert.equal((await send(`${appSide().url}/readyz`)).status, 200);
    for (const master of masters) {
      const healthKeys = await keysOn(master, `${KEY_PREFIX}:health*`);
      assert.equal(healthKeys.length, 1, `master ${master.port}`);
    }
  });

  it("relays a command between relays", async () => {
    const bridgeId = bridgeIds[0]![0]!;
    const bridge = track(await connectBridge(bridgeSide().url, bridgeId));
    await requestData(bridge, "state:snapshot", {
      lights: [light("a"), light("b")],
    });
    const received = answerLightSet(bridge, untypedLightMap("a", "b"));
    const app = track(await connectApp(appSide().url, [bridgeId]));
    const state = await requestData<BridgeState>(app, "bridge:subscribe", {
      bridgeId,
    });
    assert.equal(state.online, true);
    assert.equal(state.version, 1);
    assert.deepEqual(
      state.lights.map((stored) => stored.id),
      ["a", "b"],
    );

    const changed = nextEvent<LightsChangedEvent>(app, "lights:changed");
    const { light: answered } = await requestData<{ light: Light }>(
      app,
      "light:set",
      { bridgeId, lightId: "a", change: { on: { on: true } } },
    );
    assert.deepEqual(answered.on, { on: true });
    assert.equal(received.length, 1);
    assert.equal(received[0]?.lightId, "a");
    const event = await changed;
    assert.equal(event.version, 2);
    assert.deepEqual(event.lights[0]?.on, { on: true });
  });

  it("broadcasts bridge changes between relays", async () => {
    const bridgeId = bridgeIds[1]![0]!;
    const bridge = track(await connectBridge(bridgeSide().url, bridgeId));
    await requestData(bridge, "state:snapshot", { lights: [light("a")] });
    const app = track(await connectApp(appSide().url, [bridgeId]));
    await requestData<BridgeState>(app, "bridge:subscribe", { bridgeId });

    const changed = nextEvent<LightsChangedEvent>(app, "lights:changed");
    await requestData(bridge, "state:changed", {
      lights: [{ id: "a", dimming: { brightness: 80 } }],
    });
    const event = await changed;
    assert.equal(event.bridgeId, bridgeId);
    assert.equal(event.version, 2);
    assert.deepEqual(event.lights[0]?.dimming, { brightness: 80 });
  });

  it("shows presence online, then offline", async () => {
    const bridgeId = bridgeIds[2]![0]!;
    const app = track(await connectApp(appSide().url, [bridgeId]));
    const before = await requestData<BridgeState>(app, "bridge:subscribe", {
      bridgeId,
    });
    assert.equal(before.online, false);

    const online = nextEvent<BridgePresence>(app, "bridge:presence");
    const bridge = track(await connectBridge(bridgeSide().url, bridgeId));
    assert.equal((await online).online, true);
    assert.equal((await bridgeList(app))[0]?.online, true);

    const offline = nextEvent<BridgePresence>(app, "bridge:presence");
    bridge.close();
    assert.equal((await offline).online, false);
    assert.equal((await bridgeList(app))[0]?.online, false);
  });

  it("stores each bridge on its own master", async () => {
    const onEachMaster = bridgeIds.map((ids) => ids[1]!);
    for (const bridgeId of onEachMaster) {
      const bridge = track(await connectBridge(bridgeSide().url, bridgeId));
      await requestData(bridge, "state:snapshot", { lights: [light("a")] });
    }
    for (const [index, master] of masters.entries()) {
      const bridgeId = onEachMaster[index]!;
      const stored = await keysOn(master, `${KEY_PREFIX}:{${bridgeId}}:*`);
      assert.deepEqual(
        stored.sort(),
        [
          `${KEY_PREFIX}:{${bridgeId}}:lights`,
          `${KEY_PREFIX}:{${bridgeId}}:meta`,
        ],
        `master ${master.port}`,
      );
      assert.ok((await master.client.dbSize()) > 2, `master ${master.port}`);
    }
  });

  it("holds a presence lease per worker", async () => {
    const leases = await probe!.zRange(`${KEY_PREFIX}:{leases}:servers`, 0, -1);
    const serverIds = relays.flatMap((relay) =>
      relay.workers().map((worker) => worker.serverId),
    );
    assert.deepEqual(leases.sort(), serverIds.sort());
  });

  it("counts handshakes in Redis", async () => {
    const bridgeId = randomBridgeId();
    track(await connectBridge(bridgeSide().url, bridgeId));
    const counted: string[] = [];
    for (const master of masters) {
      counted.push(
        ...(await keysOn(master, `${KEY_PREFIX}:rl:identity:*${bridgeId}*`)),
      );
    }
    assert.equal(counted.length, 1, JSON.stringify(counted));
    assert.equal(await probe!.get(counted[0]!), "1");
  });

  it("follows a bridge's slots to another master", async () => {
    const bridgeId = randomBridgeId();
    const bridge = track(await connectBridge(bridgeSide().url, bridgeId));
    await requestData(bridge, "state:snapshot", { lights: [light("a")] });
    answerLightSet(bridge, untypedLightMap("a"));
    const app = track(await connectApp(appSide().url, [bridgeId]));
    await requestData<BridgeState>(app, "bridge:subscribe", { bridgeId });

    // The bridge's keys share one slot, and its app room's sharded channel
    // has a slot of its own.
    const admin = masters[0]!.client;
    const byPort = new Map(masters.map(({ port, client }) => [port, client]));
    const moveAway = async (slot: number): Promise<number> => {
      const from = await slotOwner(byPort, slot);
      const to = masters.find(({ port }) => port !== from)!.port;
      await moveSlot(byPort, slot, from, to);
      return to;
    };
    const roomChannel = `${KEY_PREFIX}:sio#/app#bridge:${bridgeId}#`;
    const keySlot = await bridgeSlot(admin, bridgeId);
    const roomSlot = await admin.clusterKeySlot(roomChannel);
    // Commands keep coming while the slots move.
    let moving = true;
    const outcomes: string[] = [];
    const traffic = (async () => {
      while (moving) {
        const ack = await request(app, "light:set", {
          bridgeId,
          lightId: "a",
          change: { dimming: { brightness: outcomes.length % 100 } },
        });
        outcomes.push(ack.ok ? "ok" : ack.error.code);
      }
    })();
    let keysTo: number;
    let roomTo: number;
    try {
      keysTo = await moveAway(keySlot);
      roomTo = roomSlot === keySlot ? keysTo : await moveAway(roomSlot);
    } finally {
      moving = false;
      await traffic;
    }
    assert.ok(outcomes.length > 0, "commands ran during the move");
    assert.deepEqual(
      outcomes.filter((code) => code !== "ok"),
      [],
      `${outcomes.length} commands during the move`,
    );

    const moved = await keysOn(
      masters.find(({ port }) => port === keysTo)!,
      `${KEY_PREFIX}:{${bridgeId}}:*`,
    );
    assert.deepEqual(moved.sort(), [
      `${KEY_PREFIX}:{${bridgeId}}:lights`,
      `${KEY_PREFIX}:{${bridgeId}}:meta`,
    ]);
    await waitUntil(
      "the app room's subscription on its new master",
      async () => {
        const reply = (await byPort
          .get(roomTo)!
          .sendCommand(["PUBSUB", "SHARDNUMSUB", roomChannel])) as [
          string,
          number,
        ];
        return reply[1] >= 1;
      },
      5000,
    );

    // An event of a command sent during the moves may still arrive, so the
    // check looks for the version that this command made.
    const changes = record<LightsChangedEvent>(app, "lights:changed");
    const { light: answered } = await requestData<{ light: Light }>(
      app,
      "light:set",
      { bridgeId, lightId: "a", change: { on: { on: true } } },
    );
    assert.deepEqual(answered.on, { on: true });
    const version = outcomes.length + 2;
    await waitUntil(
      `lights:changed at version ${version}`,
      () => changes.some((event) => event.version === version),
      5000,
    );
    assert.equal((await bridgeList(app))[0]?.online, true);
  });

  it("moves many bridges' slots while commands run", async () => {
    const ids = Array.from({ length: LOADED_BRIDGES }, randomBridgeId);
    const apps: Socket[] = [];
    for (const bridgeId of ids) {
      const bridge = track(await connectBridge(bridgeSide().url, bridgeId));
      answerLightSet(bridge, untypedLightMap("a"));
      await requestData(bridge, "state:snapshot", { lights: [light("a")] });
      // One app per bridge keeps each socket below its request limit.
      const app = track(await connectApp(appSide().url, [bridgeId]));
      await requestData(app, "bridge:subscribe", { bridgeId });
      apps.push(app);
    }
    const admin = masters[0]!.client;
    const byPort = new Map(masters.map(({ port, client }) => [port, client]));
    const slots = new Set<number>();
    for (const bridgeId of ids) {
      slots.add(await bridgeSlot(admin, bridgeId));
      slots.add(
        await admin.clusterKeySlot(
          `${KEY_PREFIX}:sio#/app#bridge:${bridgeId}#`,
        ),
      );
    }

    let moving = true;
    const outcomes = ids.map(() => [] as string[]);
    const traffic = ids.map(async (bridgeId, index) => {
      while (moving) {
        const ack = await request(apps[index]!, "light:set", {
          bridgeId,
          lightId: "a",
          change: { dimming: { brightness: outcomes[index]!.length % 100 } },
        });
        outcomes[index]!.push(ack.ok ? "ok" : ack.error.code);
        await sleep(LOADED_COMMAND_GAP_MS);
      }
    });
    const startedAt = performance.now();
    try {
      // Each slot moves on to the next master, once to each master. A round
      // plans its moves from each master's own claims, and moveSlot waits
      // until the masters agree before each move.
      for (let round = 0; round < MASTERS; round += 1) {
        const moves: [slot: number, from: number][] = [];
        for (const slot of slots) {
          moves.push([slot, await slotOwner(byPort, slot)]);
        }
        for (const [slot, from] of moves) {
          const index = masters.findIndex(({ port }) => port === from);
          await moveSlot(
            byPort,
            slot,
            from,
            masters[(index + 1) % MASTERS]!.port,
          );
        }
      }
      await waitForSettledSlots(byPort);
    } finally {
      moving = false;
      await Promise.all(traffic);
    }
    const movedMs = Math.round(performance.now() - startedAt);

    const all = outcomes.flat();
    console.log(
      `      resharding figure: ${slots.size} slots of ${ids.length} bridges moved ${MASTERS} times each in ${movedMs} ms while ${all.length} commands ran`,
    );
    assert.ok(
      outcomes.every((codes) => codes.length > 0),
      "commands ran for every bridge during the moves",
    );
    assert.deepEqual(
      all.filter((code) => code !== "ok"),
      [],
      `${all.length} commands during the moves`,
    );
    // Every bridge's state followed its slot: each command was stored once.
    for (const [index, bridgeId] of ids.entries()) {
      const state = await requestData<BridgeState>(
        apps[index]!,
        "bridge:subscribe",
        { bridgeId },
      );
      assert.equal(state.online, true);
      assert.equal(state.version, outcomes[index]!.length + 1);
    }
  });

  it("logs no errors", () => {
    for (const relay of relays) {
      assert.deepEqual(
        relay.logs.filter(
          (line) => line.level >= ERROR_LEVEL && !isPushHandlerFault(line),
        ),
        [],
      );
    }
  });
});

describe("Redis Cluster: no seed node answers", function () {
  this.timeout(20_000);

  it("logs the seeds without their password", async () => {
    const ports = [await findFreePort(), await findFreePort()];
    const password = "seed-password-1234";
    const relay = launchRelay({
      redisClusterNodes: ports.map(
        (port) => `redis://:${password}@127.0.0.1:${port}`,
      ),
      workers: 1,
    });
    try {
      const line = await relay.waitForLog(
        (entry) =>
          entry.connection === "main" &&
          entry.msg.startsWith("could not read the Redis Cluster topology"),
      );
      assert.deepEqual(
        line.seeds,
        ports.map((port) => `127.0.0.1:${port}`),
      );
      const printed = [
        ...relay.logs.map((entry) => JSON.stringify(entry)),
        ...relay.output,
      ];
      assert.ok(
        !printed.some((text) => text.includes(password)),
        "no password in the output",
      );
    } finally {
      relay.child.kill("SIGKILL");
      await relay.exited;
    }
  });
});
