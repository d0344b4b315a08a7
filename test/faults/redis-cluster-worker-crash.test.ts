import assert from "node:assert/strict";
import { startAppViewOnEachWorker, type AppView } from "../support/app-view.ts";
import { randomBridgeId } from "../support/clients.ts";
import type { FakeBridge } from "../support/fake-bridge.ts";
import {
  isAlive,
  outcomeOf,
  printFigure,
  startFakeBridges,
  waitUntil,
  workerOfEachBridge,
} from "../support/faults.ts";
import {
  startRedisCluster,
  type RedisCluster,
} from "../support/redis-cluster.ts";
import { startRelay, type RelayProcess } from "../support/relay-process.ts";

/** The relay's COMMAND_TIMEOUT_MS in this test. */
const COMMAND_TIMEOUT_MS = 3000;
const BRIDGE_COUNT = 6;

describe("fault: worker killed on Redis Cluster", function () {
  this.timeout(90_000);
  let cluster: RedisCluster;
  let relay: RelayProcess;
  const bridges: FakeBridge[] = [];
  const views: AppView[] = [];

  before(async () => {
    cluster = await startRedisCluster({ masters: 3 });
    relay = await startRelay({
      redisClusterNodes: cluster.urls,
      workers: 2,
      env: { COMMAND_TIMEOUT_MS: String(COMMAND_TIMEOUT_MS) },
    });
  });

  after(async () => {
    for (const bridge of bridges) bridge.close();
    for (const view of views) view.close();
    await relay?.stop();
    await cluster?.stop();
  });

  it("sends commands to the bridges' new worker", async () => {
    const workers = relay.workers();
    const serverIds = workers.map((worker) => worker.serverId);
    const bridgeIds = Array.from({ length: BRIDGE_COUNT }, randomBridgeId);
    bridges.push(...(await startFakeBridges(relay.url, bridgeIds)));
    const ownerOf = await workerOfEachBridge(bridges);
    const bridgesOn = (serverId: string) =>
      bridges.filter((bridge) => ownerOf.get(bridge.bridgeId) === serverId);
    const [victim, survivor] = [...workers].sort(
      (a, b) => bridgesOn(b.serverId).length - bridgesOn(a.serverId).length,
    ) as [(typeof workers)[0], (typeof workers)[0]];
    const victimBridges = bridgesOn(victim.serverId);
    assert.ok(victimBridges.length >= 1, "a bridge on the killed worker");
    const byWorker = await startAppViewOnEachWorker(
      { url: relay.url, bridgeIds },
      serverIds,
    );
    views.push(...byWorker.values());
    const app = byWorker.get(survivor.serverId)!;

    process.kill(victim.pid, "SIGKILL");
    await waitUntil("the killed worker gone", () => !isAlive(victim.pid), 2000);
    // Each command goes to the dead worker's channel, which counts no
    // receiver. On Redis Cluster that proves nothing, so the relay waits,
    // and resends once the bridge's presence names its new worker.
    const outcomes = await Promise.all(
      victimBridges.map((bridge) =>
        outcomeOf(
          app.client.setLight(
            bridge.bridgeId,
            "a",
            { on: { on: false } },
            { timeoutMs: 15_000 },
          ),
        ),
      ),
    );

    printFigure(
      `redis cluster, worker killed: ${outcomes.length} commands sent right after it answered ${outcomes.map((outcome) => `${outcome.code} in ${outcome.elapsedMs} ms`).join(", ")}`,
    );
    for (const outcome of outcomes) {
      assert.equal(outcome.code, "ok");
      assert.ok(
        outcome.elapsedMs < COMMAND_TIMEOUT_MS,
        `answered after ${outcome.elapsedMs} ms`,
      );
    }
  });
});
