import assert from "node:assert/strict";
import { isDeepStrictEqual } from "node:util";
import {
  AppClient,
  type BridgeState,
  type Light,
} from "../../client-sdk/src/index.ts";
import { startAppViewOnEachWorker, type AppView } from "../support/app-view.ts";
import { randomBridgeId } from "../support/clients.ts";
import { startFakeBridge, type FakeBridge } from "../support/fake-bridge.ts";
import {
  isAlive,
  outcomeOf,
  printFigure,
  sleep,
  spread,
  startFakeBridges,
  startRelayOnRedis,
  stopRelayOnRedis,
  waitUntil,
  workerOfEachBridge,
  workersReadyGauge,
  type Outcome,
} from "../support/faults.ts";
import { bearer, send } from "../support/http.ts";
import type { RedisServer } from "../support/redis-server.ts";
import type { RelayProcess } from "../support/relay-process.ts";
import { appToken } from "../support/tokens.ts";

/** The relay's COMMAND_TIMEOUT_MS in this test. */
const COMMAND_TIMEOUT_MS = 1500;
/** The time the app's worker waits beyond COMMAND_TIMEOUT_MS for a reply from another worker (`ROUTING_MARGIN_MS`). */
const ROUTING_MARGIN_MS = 1000;
/** Latest acceptable answer to a command in flight: the relay's longest wait plus 1 s for a loaded 2-core machine. */
const SETTLE_BOUND_MS = COMMAND_TIMEOUT_MS + ROUTING_MARGIN_MS + 1000;
/** Longer than SETTLE_BOUND_MS, so that a relay that never answers shows as too slow, not as the SDK's TIMEOUT. */
const CLIENT_TIMEOUT_MS = 15_000;
const BRIDGE_COUNT = 12;
const RECOVERY_TIMEOUT_MS = 20_000;

/** A command that the app saw answered `ok`, so its change must survive the crash. */
interface AcknowledgedCommand {
  bridgeId: string;
  lightId: string;
  change: Partial<Light>;
}

/** A command that reached its bridge before the kill, whose answer the bridge delays until after it. */
interface InFlightCommand {
  label: string;
  outcome: Promise<Outcome>;
  /** Codes the app may get: the relay's for a surviving app worker, the SDK's for a killed one. */
  expected: string[];
}

describe("fault: worker killed with SIGKILL", function () {
  this.timeout(90_000);
  let redis: RedisServer;
  let relay: RelayProcess;
  const bridges: FakeBridge[] = [];
  const views: AppView[] = [];

  before(async () => {
    ({ redis, relay } = await startRelayOnRedis({
      workers: 2,
      env: { COMMAND_TIMEOUT_MS: String(COMMAND_TIMEOUT_MS) },
    }));
  });
  after(async () => {
    for (const bridge of bridges) bridge.close();
    for (const view of views) view.close();
    await stopRelayOnRedis({ relay, redis });
  });

  it("recovers without losing acknowledged commands", async () => {
    const url = relay.url;
    const original = relay.workers();
    assert.equal(original.length, 2);
    const serverIds = original.map((worker) => worker.serverId);

    // Bridges spread over both workers round-robin.
    const bridgeIds = Array.from({ length: BRIDGE_COUNT }, randomBridgeId);
    bridges.push(...(await startFakeBridges(url, bridgeIds)));
    const ownerOf = await workerOfEachBridge(bridges);
    const bridgesOn = (serverId: string): FakeBridge[] =>
      bridges.filter((bridge) => ownerOf.get(bridge.bridgeId) === serverId);
    const [victim, survivor] = [...original].sort(
      (a, b) => bridgesOn(b.serverId).length - bridgesOn(a.serverId).length,
    ) as [(typeof original)[0], (typeof original)[0]];
    const victimBridges = bridgesOn(victim.serverId);
    const survivorBridges = bridgesOn(survivor.serverId);
    assert.ok(
      victimBridges.length >= 2 && survivorBridges.length >= 2,
      `bridges per worker: ${victimBridges.length} and ${survivorBridges.length}`,
    );

    // One app on each worker, subscribed to every bridge.
    const byWorker = await startAppViewOnEachWorker(
      { url, bridgeIds },
      serverIds,
    );
    views.push(...byWorker.values());
    for (const view of views) await view.subscribe(bridgeIds);
    const appOnVictim = byWorker.get(victim.serverId)!;
    const appOnSurvivor = byWorker.get(survivor.serverId)!;

    // Commands answered ok before the kill, from both apps, to every light.
    const acknowledged: AcknowledgedCommand[] = [];
    await Promise.all(
      bridges.map(async (bridge, index) => {
        for (const [step, lightId] of ["a", "b", "c"].entries()) {
          const app = (index + step) % 2 === 0 ? appOnVictim : appOnSurvivor;
          const change = {
            on: { on: true },
            dimming: { brightness: 10 + index * 3 + step },
          };
          await app.client.setLight(bridge.bridgeId, lightId, change);
          acknowledged.push({ bridgeId: bridge.bridgeId, lightId, change });
        }
      }),
    );

    // Commands in flight at the kill: each reaches its bridge, which applies
    // it and holds its answer until after the kill.
    for (const bridge of bridges) bridge.withholdAnswers();
    const received = new Map(
      bridges.map((bridge) => [bridge.bridgeId, bridge.commands.length]),
    );
    const inFlight: InFlightCommand[] = [];
    const sendInFlight = (
      app: AppView,
      bridge: FakeBridge,
      lightId: string,
      expected: string[],
    ): void => {
      received.set(bridge.bridgeId, received.get(bridge.bridgeId)! + 1);
      const request = app.client.setLight(
        bridge.bridgeId,
        lightId,
        // A field the acknowledged commands leave alone, so that their check
        // is not confused by these changes, which the bridge did apply.
        { color_temperature: { mirek: 300 } },
        { timeoutMs: CLIENT_TIMEOUT_MS },
      );
      inFlight.push({
        label: `app on ${app === appOnVictim ? "killed" : "surviving"} worker to bridge ${bridge.bridgeId} on ${ownerOf.get(bridge.bridgeId) === victim.serverId ? "killed" : "surviving"} worker`,
        outcome: outcomeOf(request),
        expected,
      });
    };
    for (const bridge of victimBridges) {
      // The surviving worker routed these to the killed one and waits for a reply.
      sendInFlight(appOnSurvivor, bridge, "a", ["TIMEOUT", "BRIDGE_OFFLINE"]);
      // The app's own connection dies with the worker: the SDK rejects at once.
      sendInFlight(appOnVictim, bridge, "b", ["UNAVAILABLE"]);
    }
    for (const bridge of survivorBridges) {
      sendInFlight(appOnVictim, bridge, "b", ["UNAVAILABLE"]);
    }
    await waitUntil(
      "every in-flight command reaching its bridge",
      () =>
        bridges.every(
          (bridge) => bridge.commands.length === received.get(bridge.bridgeId),
        ),
      5000,
    );

    const killedAt = Date.now();
    process.kill(victim.pid, "SIGKILL");
    for (const bridge of bridges) bridge.answerCommands();

    // Once the process is gone and before the bridges reconnect (100 ms at
    // the earliest), the stale claim names a dead worker, and no
    // process subscribes to its channel. The relay resends such a command
    // to the bridge's next worker.
    await waitUntil(
      "the killed worker gone",
      () => !isAlive(victim.pid),
      2000,
      5,
    );
    await sleep(10);
    const offlineProbes = await Promise.all(
      victimBridges.map((bridge) =>
        outcomeOf(
          appOnSurvivor.client.setLight(
            bridge.bridgeId,
            "c",
            { color: { xy: { x: 0.3, y: 0.3 } } },
            { timeoutMs: CLIENT_TIMEOUT_MS },
          ),
        ),
      ),
    );

    // The primary forks a replacement, which logs "worker ready".
    const replacement = await relay.waitForLog(
      (line) =>
        line.msg === "worker ready" &&
        !original.some((worker) => worker.pid === line.pid),
      RECOVERY_TIMEOUT_MS,
    );
    const replacementReadyMs = Number(replacement.time) - killedAt;
    assert.notEqual(replacement.pid, victim.pid);
    assert.equal(isAlive(victim.pid), false, "the killed worker is gone");
    await waitUntil(
      "relay_workers_ready back at 2",
      async () => (await workersReadyGauge(url)) === 2,
      RECOVERY_TIMEOUT_MS,
      100,
    );
    assert.equal(isAlive(relay.pid), true, "the primary survived");
    assert.equal(relay.child.exitCode, null, "the primary kept running");
    assert.equal(isAlive(survivor.pid), true, "the other worker survived");

    // Every command in flight settles, with an allowed code, in time.
    const settled = await Promise.all(
      inFlight.map(async (command) => ({
        ...command,
        result: await command.outcome,
      })),
    );
    for (const command of settled) {
      assert.ok(
        command.expected.includes(command.result.code),
        `${command.label}: answered ${command.result.code}, expected one of ${command.expected.join(", ")}`,
      );
      assert.ok(
        command.result.elapsedMs <= SETTLE_BOUND_MS,
        `${command.label}: answered after ${command.result.elapsedMs} ms, bound ${SETTLE_BOUND_MS} ms`,
      );
    }
    for (const probe of offlineProbes) {
      assert.equal(
        probe.code,
        "ok",
        "a command right after the kill reaches the reconnected bridge",
      );
    }

    // Bridges of the killed worker reconnect and resend their snapshot.
    const bridgesBackMs = await waitUntil(
      "every bridge of the killed worker synced again",
      () =>
        victimBridges.every((bridge) =>
          bridge.syncs.some(
            (sync) => sync.trigger === "connect" && sync.at > killedAt,
          ),
        ),
      RECOVERY_TIMEOUT_MS,
    ).then(() =>
      victimBridges.map(
        (bridge) =>
          bridge.syncs.find((sync) => sync.at > killedAt)!.at - killedAt,
      ),
    );
    const liveServers = new Set(relay.workers().map((w) => w.serverId));
    liveServers.delete(victim.serverId);
    for (const bridge of victimBridges) {
      const { serverId } = await bridge.client.serverInfo();
      assert.ok(
        liveServers.has(serverId),
        `bridge ${bridge.bridgeId} reconnected to ${serverId}, not to a live worker`,
      );
    }

    // The app of the killed worker reconnects and subscribes again.
    const resyncedAfterKill = (bridgeId: string) =>
      appOnVictim.refreshes.find(
        (refresh) =>
          refresh.bridgeId === bridgeId &&
          refresh.kind === "resynced" &&
          refresh.at > killedAt,
      );
    await waitUntil(
      "the app of the killed worker resubscribed to every bridge",
      () => bridgeIds.every((bridgeId) => resyncedAfterKill(bridgeId)),
      RECOVERY_TIMEOUT_MS,
    );
    const appBackMs =
      Math.max(
        ...bridgeIds.map((bridgeId) => resyncedAfterKill(bridgeId)!.at),
      ) - killedAt;

    // State read after recovery contains every acknowledged change, and each
    // app's copy matches the bridge's own lights.
    const token = await appToken("crash-reader", bridgeIds, "read");
    const stored = new Map<string, BridgeState>();
    for (const bridge of bridges) {
      const response = await send(`${url}/api/v1/bridges/${bridge.bridgeId}`, {
        headers: bearer(token),
      });
      assert.equal(response.status, 200, response.text);
      stored.set(bridge.bridgeId, response.body as BridgeState);
    }
    for (const command of acknowledged) {
      const light = stored
        .get(command.bridgeId)!
        .lights.find((entry) => entry.id === command.lightId);
      assert.ok(
        light !== undefined,
        `light ${command.lightId} of ${command.bridgeId} missing`,
      );
      assert.deepEqual(
        { on: light.on, dimming: light.dimming },
        command.change,
        `acknowledged change to ${command.bridgeId}/${command.lightId} lost`,
      );
    }
    for (const bridge of bridges) {
      const state = stored.get(bridge.bridgeId)!;
      assert.equal(state.online, true, `bridge ${bridge.bridgeId} online`);
      assert.deepEqual(
        [...state.lights].sort((a, b) => a.id.localeCompare(b.id)),
        bridge.sortedLights(),
        `stored lights of ${bridge.bridgeId} match the bridge`,
      );
    }
    const viewsCurrentMs = await waitUntil(
      "every app's copy matching every bridge",
      () =>
        views.every((view) =>
          bridges.every((bridge) =>
            isDeepStrictEqual(
              view.sortedLights(bridge.bridgeId),
              bridge.sortedLights(),
            ),
          ),
        ),
      5000,
    ).catch(() => -1);
    for (const view of views) {
      for (const bridge of bridges) {
        assert.deepEqual(
          view.sortedLights(bridge.bridgeId),
          bridge.sortedLights(),
          `app on ${view.serverId} sees the lights of ${bridge.bridgeId}`,
        );
      }
    }
    assert.ok(viewsCurrentMs >= 0);

    // Commands work again from both apps to every bridge.
    for (const bridge of bridges) {
      for (const view of views) {
        const result = await outcomeOf(
          view.client.setLight(bridge.bridgeId, "c", {
            dimming: { brightness: 7 },
          }),
        );
        assert.equal(
          result.code,
          "ok",
          `command to ${bridge.bridgeId} after recovery`,
        );
      }
    }

    const unhandled = relay.logs.filter(
      (line) => line.msg === "unhandled promise rejection",
    );
    assert.deepEqual(unhandled, [], "no unhandled promise rejection logged");

    const back = spread(bridgesBackMs);
    const answered = spread(settled.map((command) => command.result.elapsedMs));
    const counts = new Map<string, number>();
    for (const command of settled)
      counts.set(
        command.result.code,
        (counts.get(command.result.code) ?? 0) + 1,
      );
    printFigure(
      `worker crash (kill -9, 2 workers, ${BRIDGE_COUNT} bridges, ${victimBridges.length} on the killed worker, COMMAND_TIMEOUT_MS ${COMMAND_TIMEOUT_MS}): ` +
        `replacement worker ready in ${replacementReadyMs} ms, ` +
        `all bridges back online in ${back.max} ms (median ${back.median} ms), ` +
        `app of the killed worker resubscribed in ${appBackMs} ms, ` +
        `${settled.length} in-flight commands settled in at most ${answered.max} ms ` +
        `(${[...counts].map(([code, count]) => `${count} ${code}`).join(", ")}), ` +
        `${offlineProbes.length} commands sent right after the kill answered ok via the bridges' new worker in at most ${spread(offlineProbes.map((probe) => probe.elapsedMs)).max} ms`,
    );
  });
});

/**
 * The relay's WORKER_UNRESPONSIVE_MS in the stopped-primary test. The
 * watchdog pings every fifth of it, so a ping falls due in every stop.
 */
const STOPPED_PRIMARY_UNRESPONSIVE_MS = 100;
/** How long the primary stays stopped each time, in ms: three ping intervals. */
const PRIMARY_STOP_MS = 300;
const STOP_KILL_ROUNDS = 3;
/** Maximum time for a replacement worker to report ready, in ms, restart delay included. */
const REPLACEMENT_TIMEOUT_MS = 8000;

describe("fault: worker killed while the primary is stopped", function () {
  this.timeout(30_000);
  let redis: RedisServer;
  let relay: RelayProcess;

  before(async () => {
    ({ redis, relay } = await startRelayOnRedis({
      workers: 2,
      env: { WORKER_UNRESPONSIVE_MS: String(STOPPED_PRIMARY_UNRESPONSIVE_MS) },
    }));
  });
  after(async () => {
    // A failed round may leave the primary stopped, and a stopped process
    // does not act on SIGTERM.
    if (relay !== undefined && isAlive(relay.pid)) {
      process.kill(relay.pid, "SIGCONT");
    }
    await stopRelayOnRedis({ relay, redis });
  });

  it("keeps the primary and replaces the worker", async () => {
    // On resuming, the primary runs its due timers before it reads the dead
    // worker's closed IPC channel, so the watchdog's ping goes to a worker
    // that has exited and fails with EPIPE.
    let failedSends = 0;
    for (let round = 1; round <= STOP_KILL_ROUNDS; round += 1) {
      const live = relay.workers().filter((worker) => isAlive(worker.pid));
      assert.equal(live.length, 2, `round ${round}: live workers`);
      const victim = live[0]!;
      const logsBefore = relay.logs.length;

      process.kill(relay.pid, "SIGSTOP");
      process.kill(victim.pid, "SIGKILL");
      await sleep(PRIMARY_STOP_MS);
      process.kill(relay.pid, "SIGCONT");

      const uncaughtSinceStop = (): string[] =>
        relay.logs
          .slice(logsBefore)
          .filter((line) => line.msg.startsWith("uncaught exception"))
          .map((line) => `${line.msg}: ${JSON.stringify(line.err)}`);
      const replacement = await relay
        .waitForLog(
          (line) =>
            line.msg === "worker ready" &&
            relay.logs.indexOf(line) >= logsBefore,
          REPLACEMENT_TIMEOUT_MS,
        )
        .catch((error: unknown) => {
          // A primary that crashed logged why: show that, not the timeout.
          assert.deepEqual(
            uncaughtSinceStop(),
            [],
            `round ${round}: uncaught exceptions in the primary`,
          );
          throw error;
        });
      assert.notEqual(replacement.pid, victim.pid);
      assert.equal(
        relay.child.exitCode,
        null,
        `round ${round}: primary exited`,
      );
      assert.ok(isAlive(relay.pid), `round ${round}: primary alive`);
      await waitUntil(
        `round ${round}: killed worker ${victim.pid} reaped`,
        () => !isAlive(victim.pid),
        2000,
      );

      assert.deepEqual(
        uncaughtSinceStop(),
        [],
        `round ${round}: uncaught exceptions in the primary`,
      );
      failedSends += relay.logs
        .slice(logsBefore)
        .filter(
          (line) =>
            line.msg.startsWith("sending a message to the worker failed") &&
            line.workerPid === victim.pid,
        ).length;

      // A new bridge connects, and an app's command to it returns ok.
      const bridgeId = randomBridgeId();
      const bridge = await startFakeBridge({ url: relay.url, bridgeId });
      const app = new AppClient({
        url: relay.url,
        token: await appToken(`stopped-primary-${round}`, [bridgeId]),
      });
      try {
        await app.connect();
        const result = await outcomeOf(
          app.setLight(bridgeId, "a", { on: { on: true } }),
        );
        assert.equal(result.code, "ok", `round ${round}: command answer`);
      } finally {
        app.close();
        bridge.client.close();
      }
    }
    // Every round should send the ping into the window. At least one must,
    // or this test did not drive the fault.
    assert.ok(failedSends >= 1, "no send to a killed worker failed");
    printFigure(
      `worker killed while the primary was stopped (${STOP_KILL_ROUNDS} rounds, stop ${PRIMARY_STOP_MS} ms, ` +
        `WORKER_UNRESPONSIVE_MS ${STOPPED_PRIMARY_UNRESPONSIVE_MS}): primary survived every round, ` +
        `${failedSends} sends to a killed worker failed and were logged`,
    );
  });
});
