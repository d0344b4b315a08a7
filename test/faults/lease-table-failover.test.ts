import assert from "node:assert/strict";
import {
  createClient,
  createCluster,
  type RedisClientType,
  type RedisClusterType,
} from "redis";
import type { Socket } from "socket.io-client";
import type { BridgePresence } from "../../client-sdk/src/protocol.ts";
import {
  connectApp,
  connectBridge,
  record,
  requestData,
} from "../support/clients.ts";
import { light } from "../support/fixtures.ts";
import { printFigure, sleep, waitUntil } from "../support/faults.ts";
import {
  bridgeIdsOn,
  masterPortOf,
  startRedisCluster,
  type RedisCluster,
} from "../support/redis-cluster.ts";
import { startRelay, type RelayProcess } from "../support/relay-process.ts";

/** How long a master may be unreachable before its replica takes over. */
const NODE_TIMEOUT_MS = 1000;
/** Short, so that the takeover outlasts a lease's TTL of 1.5 heartbeats. */
const HEARTBEAT_MS = 1000;
const LEASES_KEY = "relay:{leases}:servers";
const BRIDGES_PER_RELAY = 3;
const RENEWAL_BOUND_MS = 10_000;
const SWEEP_LOG =
  "presence lease expired, bridges of that server marked offline";

/** Returns the lease expiry of each server ID in `serverIds`, as ms left on Redis's clock. */
async function leaseTimesLeft(
  probe: RedisClusterType,
  serverIds: string[],
): Promise<number[]> {
  const [seconds, micros] = (await probe.sendCommand(LEASES_KEY, true, [
    "TIME",
  ])) as [string, string];
  const now = Number(seconds) * 1000 + Math.floor(Number(micros) / 1000);
  const scores = await Promise.all(
    serverIds.map((serverId) => probe.zScore(LEASES_KEY, serverId)),
  );
  return scores.map((score) => (score ?? 0) - now);
}

describe("fault: the master of the presence leases fails over", function () {
  this.timeout(90_000);
  let cluster: RedisCluster;
  let relays: RelayProcess[] = [];
  let admin: RedisClientType;
  let probe: RedisClusterType;
  const sockets: Socket[] = [];

  before(async () => {
    cluster = await startRedisCluster({
      masters: 3,
      replicas: 1,
      nodeTimeoutMs: NODE_TIMEOUT_MS,
    });
    admin = createClient({ url: cluster.urls[0] });
    admin.on("error", () => undefined);
    await admin.connect();
    probe = createCluster({
      rootNodes: cluster.urls.map((url) => ({ url })),
    });
    probe.on("error", () => undefined);
    await probe.connect();
    const env = { PRESENCE_HEARTBEAT_MS: String(HEARTBEAT_MS) };
    relays = await Promise.all([
      startRelay({ redisClusterNodes: cluster.urls, workers: 1, env }),
      startRelay({ redisClusterNodes: cluster.urls, workers: 1, env }),
    ]);
  });

  after(async () => {
    for (const socket of sockets.splice(0)) socket.close();
    await Promise.all(relays.map((relay) => relay.stop()));
    await admin?.close();
    await probe?.close();
    await cluster?.stop();
  });

  it("sweeps no live server's bridges", async () => {
    const leasesSlot = await admin.clusterKeySlot(LEASES_KEY);
    const victimPort = (await masterPortOf(admin, leasesSlot))!;
    // The bridges' own keys stay on the other masters, so only the leases move.
    const survivor = cluster.ports.find((port) => port !== victimPort)!;
    const bridgeIds = await bridgeIdsOn(
      admin,
      survivor,
      BRIDGES_PER_RELAY * relays.length,
    );
    for (const [index, bridgeId] of bridgeIds.entries()) {
      const relay = relays[index % relays.length]!;
      const bridge = await connectBridge(relay.url, bridgeId);
      sockets.push(bridge);
      await requestData(bridge, "state:snapshot", { lights: [light("a")] });
    }
    const app = await connectApp(relays[0]!.url, bridgeIds);
    sockets.push(app);
    const presences = record<BridgePresence>(app, "bridge:presence");
    for (const bridgeId of bridgeIds) {
      await requestData(app, "bridge:subscribe", { bridgeId });
    }
    const serverIds = relays.flatMap((relay) =>
      relay.workers().map((worker) => worker.serverId),
    );

    const killedAt = performance.now();
    await cluster.kill(victimPort);
    // Every lease renewed on the promoted replica.
    await waitUntil(
      "every lease renewed after the takeover",
      async () => {
        try {
          const left = await leaseTimesLeft(probe, serverIds);
          return left.every((ms) => ms > HEARTBEAT_MS);
        } catch {
          return false;
        }
      },
      RENEWAL_BOUND_MS,
      100,
    );
    const renewedMs = Math.round(performance.now() - killedAt);
    // Long enough for a sweep: a server sweeps others once its own lease
    // has been renewed for two TTLs (3 heartbeats), and looks 4 times a
    // heartbeat.
    await sleep(4 * HEARTBEAT_MS);

    const sweeps = relays.flatMap((relay) =>
      relay.logs.filter((line) => line.msg === SWEEP_LOG),
    );
    const restored = relays.flatMap((relay) =>
      relay.logs.filter(
        (line) =>
          line.msg ===
          "presence lease was lost, checking every bridge claim again",
      ),
    );
    printFigure(
      `master of the presence leases killed (node timeout ${NODE_TIMEOUT_MS} ms, heartbeat ${HEARTBEAT_MS} ms): every lease renewed ${renewedMs} ms after the kill, ${restored.length} of ${serverIds.length} restored after expiring, ${sweeps.length} sweeps`,
    );
    assert.ok(restored.length > 0, "a lease outlived its TTL");
    assert.deepEqual(sweeps, [], "no server swept another");
    assert.deepEqual(
      presences.filter((presence) => !presence.online),
      [],
      "no bridge reported offline",
    );
    const { bridges } = await requestData<{ bridges: BridgePresence[] }>(
      app,
      "bridge:list",
      {},
    );
    assert.deepEqual(
      bridges
        .filter((bridge) => !bridge.online)
        .map((bridge) => bridge.bridgeId),
      [],
    );
  });
});
