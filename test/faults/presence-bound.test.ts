import assert from "node:assert/strict";
import { createClient } from "redis";
import type { Socket } from "socket.io-client";
import type { BridgePresence } from "../../client-sdk/src/protocol.ts";
import {
  connectApp,
  connectBridge,
  randomBridgeId,
  requestData,
} from "../support/clients.ts";
import { printFigure, sleep, waitUntil } from "../support/faults.ts";
import { light } from "../support/fixtures.ts";
import { startRedisServer, type RedisServer } from "../support/redis-server.ts";
import { startRelay, type RelayProcess } from "../support/relay-process.ts";

/** Long enough that scheduling noise is small beside a quarter of it. */
const HEARTBEAT_MS = 2000;
/** The bound the docs promise: two heartbeats after the process died. */
const PRESENCE_BOUND_MS = 2 * HEARTBEAT_MS;
const LEASES_KEY = "relay:{leases}:servers";
const BRIDGES = 3;

/**
 * Kills a relay machine right after its worker renewed its presence lease,
 * which is the worst moment: the lease then lives longest. Its bridges
 * must still be reported offline within two heartbeats.
 */
describe("fault: a machine dies just after renewing its lease", function () {
  this.timeout(60_000);
  const env = { PRESENCE_HEARTBEAT_MS: String(HEARTBEAT_MS) };
  let redis: RedisServer;
  let survivor: RelayProcess;
  let victim: RelayProcess;
  const sockets: Socket[] = [];

  before(async () => {
    redis = await startRedisServer();
    [survivor, victim] = await Promise.all([
      startRelay({ redisUrl: redis.url, workers: 1, env }),
      startRelay({ redisUrl: redis.url, workers: 1, env }),
    ]);
  });

  after(async () => {
    for (const socket of sockets.splice(0)) socket.close();
    await Promise.all([survivor.stop(), victim.stop("SIGKILL")]);
    await redis.stop();
  });

  it("reports its bridges offline within two heartbeats", async () => {
    const bridgeIds = Array.from({ length: BRIDGES }, randomBridgeId);
    for (const bridgeId of bridgeIds) {
      const bridge = await connectBridge(victim.url, bridgeId);
      sockets.push(bridge);
      await requestData(bridge, "state:snapshot", { lights: [light("a")] });
    }
    const app = await connectApp(survivor.url, bridgeIds);
    sockets.push(app);
    for (const bridgeId of bridgeIds) {
      await requestData(app, "bridge:subscribe", { bridgeId });
    }
    const offlineAt = new Map<string, number>();
    app.on("bridge:presence", (event: BridgePresence) => {
      if (!event.online) offlineAt.set(event.bridgeId, performance.now());
    });

    const killedAt = await killAfterRenewal(redis.url, victim);
    await waitUntil(
      "every bridge offline",
      () => offlineAt.size === BRIDGES,
      PRESENCE_BOUND_MS * 2,
    );
    const converged = Math.max(...offlineAt.values()) - killedAt;
    printFigure(
      `machine killed right after a lease renewal: offline after ${Math.round(converged)} ms (heartbeat ${HEARTBEAT_MS} ms, bound ${PRESENCE_BOUND_MS} ms)`,
    );
    assert.ok(
      converged <= PRESENCE_BOUND_MS,
      `offline ${Math.round(converged)} ms after the kill, bound ${PRESENCE_BOUND_MS} ms`,
    );
  });
});

/**
 * Watches the victim worker's lease expiry in Redis and kills the whole
 * relay with SIGKILL as soon as it moves. Returns the time of the kill.
 */
async function killAfterRenewal(
  redisUrl: string,
  victim: RelayProcess,
): Promise<number> {
  const [worker] = victim.workers();
  assert.ok(worker, "the victim relay reported no worker");
  const admin = createClient({ url: redisUrl });
  await admin.connect();
  try {
    const first = await admin.zScore(LEASES_KEY, worker.serverId);
    assert.notEqual(first, null, "the victim worker holds no lease");
    const deadline = performance.now() + HEARTBEAT_MS * 2;
    while ((await admin.zScore(LEASES_KEY, worker.serverId)) === first) {
      assert.ok(performance.now() < deadline, "the lease was not renewed");
      await sleep(2);
    }
    for (const pid of [worker.pid, victim.pid]) process.kill(pid, "SIGKILL");
    return performance.now();
  } finally {
    await admin.close();
  }
}
