import assert from "node:assert/strict";
import { isDeepStrictEqual } from "node:util";
import { pino } from "pino";
import { createClient } from "redis";
import type { BridgeState } from "../../client-sdk/src/index.ts";
import { connectRedis, type RedisClients } from "../../server/redis/clients.ts";
import {
  startAppView,
  startAppViewOnEachWorker,
  type AppView,
} from "../support/app-view.ts";
import { connectError, randomBridgeId } from "../support/clients.ts";
import { startFakeBridge, type FakeBridge } from "../support/fake-bridge.ts";
import {
  isAlive,
  outcomeOf,
  printFigure,
  readinessByWorker,
  sleep,
  spread,
  startFakeBridges,
  startRelayOnRedis,
  stopRelayOnRedis,
  waitForReadiness,
  waitUntil,
  workerOfEachBridge,
  type Outcome,
} from "../support/faults.ts";
import { bearer, send, sendJson } from "../support/http.ts";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  findFreePort,
  spawnRedis,
  startRedisServer,
  stopProcess,
  type RedisServer,
} from "../support/redis-server.ts";
import {
  launchRelay,
  startRelay,
  type LogLine,
  type RelayProcess,
} from "../support/relay-process.ts";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.ts";
import { appToken, bridgeToken } from "../support/tokens.ts";

const BRIDGE_COUNT = 8;
/** Bound on an `UNAVAILABLE` response while Redis is down: far below COMMAND_TIMEOUT_MS, with room for a loaded 2-core machine. */
const UNAVAILABLE_BOUND_MS = 300;
/** Redis clients retry every 5 s at most, so recovery has that plus the resync round trips. */
const RECOVERY_TIMEOUT_MS = 20_000;
const KEY_PREFIX = "relay";

/** A request that needs Redis, sent while Redis is down. */
interface Probe {
  label: string;
  outcome: Outcome;
}

describe("fault: Redis outage", function () {
  this.timeout(150_000);
  let redis: RedisServer;
  let relay: RelayProcess;
  let url: string;
  let serverIds: string[];
  let workerPids: number[];
  let token: string;
  const bridges: FakeBridge[] = [];
  const bridgeIds: string[] = [];
  /** Server ID of the worker with each bridge's socket. */
  let ownerOf: Map<string, string>;
  /** One app per worker, subscribed to every bridge. */
  const views: AppView[] = [];
  /** One app per worker, subscribed to nothing, that sends requests during the outage. */
  const probes: AppView[] = [];

  before(async () => {
    ({ redis, relay } = await startRelayOnRedis({ workers: 2 }));
    url = relay.url;
    serverIds = relay.workers().map((worker) => worker.serverId);
    workerPids = relay.workers().map((worker) => worker.pid);
    bridgeIds.push(...Array.from({ length: BRIDGE_COUNT }, randomBridgeId));
    token = await appToken("outage-reader", bridgeIds, "read control");
    bridges.push(...(await startFakeBridges(url, bridgeIds)));
    ownerOf = await workerOfEachBridge(bridges);
    views.push(
      ...(
        await startAppViewOnEachWorker({ url, bridgeIds }, serverIds)
      ).values(),
    );
    for (const view of views) await view.subscribe(bridgeIds);
    probes.push(
      ...(
        await startAppViewOnEachWorker({ url, bridgeIds }, serverIds)
      ).values(),
    );
  });
  after(async () => {
    for (const bridge of bridges) bridge.close();
    for (const app of [...views, ...probes]) app.close();
    await stopRelayOnRedis({ relay, redis });
  });

  /** Shard channels each worker must subscribe to, with the number of subscribers each must have. */
  const expectedChannels = (): Map<string, number> => {
    const channels = new Map<string, number>();
    for (const serverId of serverIds)
      channels.set(`${KEY_PREFIX}:server:${serverId}`, 1);
    channels.set(`${KEY_PREFIX}:sio#/app#`, serverIds.length);
    channels.set(`${KEY_PREFIX}:sio#/bridge#`, serverIds.length);
    for (const bridgeId of bridgeIds) {
      // An app on every worker watches every bridge.
      channels.set(`${KEY_PREFIX}:sio#/app#bridge:${bridgeId}#`, views.length);
      // Bridge sockets join no room, so no channel per bridge in /bridge.
      channels.set(`${KEY_PREFIX}:sio#/bridge#bridge:${bridgeId}#`, 0);
    }
    return channels;
  };

  /** Returns each expected channel whose subscriber count differs, with the count found. */
  const missingChannels = async (): Promise<string[]> => {
    const client = createClient({ url: redis.url });
    client.on("error", () => undefined);
    await client.connect();
    try {
      const expected = expectedChannels();
      const active = new Set(await client.pubSubShardChannels());
      const counts = await client.pubSubShardNumSub([...expected.keys()]);
      return [...expected]
        .filter(([channel, count]) =>
          count === 0
            ? active.has(channel)
            : !active.has(channel) || Number(counts[channel]) !== count,
        )
        .map(
          ([channel, count]) =>
            `${channel}: ${String(counts[channel] ?? 0)} subscribers, expected ${count}`,
        );
    } finally {
      await client.close();
    }
  };

  /** Sends every request that needs Redis from each worker and returns the outcomes. */
  const probeRequests = async (round: string): Promise<Probe[]> => {
    const results: Probe[] = [];
    const bridgeId = bridgeIds[0]!;
    for (const probe of probes) {
      const on = `${round}, socket on ${probe.serverId}`;
      results.push(
        {
          label: `${on}: bridge:list`,
          outcome: await outcomeOf(probe.client.listBridges()),
        },
        {
          label: `${on}: bridge:subscribe`,
          outcome: await outcomeOf(probe.client.subscribe(bridgeId)),
        },
        {
          label: `${on}: light:set`,
          outcome: await outcomeOf(
            probe.client.setLight(bridgeId, "a", { on: { on: false } }),
          ),
        },
      );
    }
    const requests = [
      {
        label: "GET /api/v1/bridges",
        send: () => send(`${url}/api/v1/bridges`, { headers: bearer(token) }),
      },
      {
        label: "GET /api/v1/bridges/:bridgeId",
        send: () =>
          send(`${url}/api/v1/bridges/${bridgeId}`, { headers: bearer(token) }),
      },
      {
        label: "PUT /api/v1/bridges/:bridgeId/lights/:lightId",
        send: () =>
          sendJson(
            `${url}/api/v1/bridges/${bridgeId}/lights/a`,
            "PUT",
            { on: { on: false } },
            bearer(token),
          ),
      },
    ];
    for (const request of requests) {
      // Round-robin: two requests in a row reach both workers.
      for (let index = 0; index < 2 * serverIds.length; index += 1) {
        const startedAt = Date.now();
        const response = await request.send();
        const elapsedMs = Date.now() - startedAt;
        const body = response.body as { error?: { code?: string } };
        results.push({
          label: `${round}, HTTP on ${response.servedBy}: ${request.label} (status ${response.status})`,
          outcome: {
            code:
              response.status === 503
                ? (body.error?.code ?? "no code")
                : `status ${response.status}`,
            elapsedMs,
          },
        });
      }
    }
    return results;
  };

  /** Attempts bridge handshakes, which must fail while Redis is down. */
  const probeHandshakes = async (round: string): Promise<Probe[]> => {
    const results: Probe[] = [];
    for (let index = 0; index < 2 * serverIds.length; index += 1) {
      const startedAt = Date.now();
      const error = await connectError(url, "/bridge", {
        auth: { token: await bridgeToken(randomBridgeId()) },
      });
      results.push({
        label: `${round}: bridge handshake`,
        outcome: {
          code: error.data?.code ?? error.message,
          elapsedMs: Date.now() - startedAt,
        },
      });
    }
    return results;
  };

  const assertUnavailable = (results: Probe[]): void => {
    for (const { label, outcome } of results) {
      assert.equal(outcome.code, "UNAVAILABLE", label);
      assert.ok(
        outcome.elapsedMs < UNAVAILABLE_BOUND_MS,
        `${label}: answered in ${outcome.elapsedMs} ms, bound ${UNAVAILABLE_BOUND_MS} ms`,
      );
    }
  };

  const assertProcessesUnchanged = (): void => {
    assert.equal(relay.child.exitCode, null, "the primary kept running");
    assert.equal(isAlive(relay.pid), true, "the primary is alive");
    assert.deepEqual(
      relay.workers().map((worker) => worker.pid),
      workerPids,
      "no worker was replaced",
    );
    for (const pid of workerPids)
      assert.equal(isAlive(pid), true, `worker ${pid} is alive`);
    assert.deepEqual(
      relay.logs.filter((line) => line.msg === "worker died, restarting"),
      [],
    );
  };

  const runOutage = async (outageMs: number, brightness: number) => {
    const seconds = outageMs / 1000;
    // Before: everything is served and subscribed.
    const before = await readinessByWorker(url, serverIds);
    for (const serverId of serverIds) assert.equal(before.get(serverId), 200);
    assert.deepEqual(await missingChannels(), [], "channels before the outage");

    await redis.stop();
    const stoppedAt = Date.now();
    const readiness = await readinessByWorker(url, serverIds);
    for (const serverId of serverIds)
      assert.equal(readiness.get(serverId), 503, `/readyz on ${serverId}`);
    const early = [
      ...(await probeRequests(`${seconds} s outage, at once`)),
      ...(await probeHandshakes(`${seconds} s outage, at once`)),
    ];
    // A change on the bridge itself cannot be stored now. The snapshot
    // after the resync must carry it.
    const switched = bridges[1]!;
    const report = await outcomeOf(
      switched.switchLight({ id: "c", dimming: { brightness } }),
    );
    assert.equal(report.code, "UNAVAILABLE", "state:changed during the outage");

    // Late in the outage, the Redis clients retry only every 5 s.
    await sleep(Math.max(0, stoppedAt + outageMs - 1500 - Date.now()));
    const late = [
      ...(await probeRequests(`${seconds} s outage, at the end`)),
      ...(await probeHandshakes(`${seconds} s outage, at the end`)),
    ];
    const lateReadiness = await readinessByWorker(url, serverIds);
    for (const serverId of serverIds)
      assert.equal(lateReadiness.get(serverId), 503, `/readyz on ${serverId}`);
    assertProcessesUnchanged();
    await sleep(Math.max(0, stoppedAt + outageMs - Date.now()));

    // Redis comes back empty on the same port.
    await redis.restart();
    const restartedAt = Date.now();
    // Measured side by side, so each time counts from the restart.
    const [readyMs, channelsMs] = await Promise.all([
      waitForReadiness(url, serverIds, 200, RECOVERY_TIMEOUT_MS),
      waitUntil(
        "every expected shard channel subscribed again",
        async () => (await missingChannels()).length === 0,
        RECOVERY_TIMEOUT_MS,
        50,
      ).catch(async (error: Error) => {
        const missing = await missingChannels();
        throw new Error(`${error.message}: ${missing.join("; ")}`);
      }),
    ]);

    // Every bridge is asked to resync and resends its lights.
    const resyncAfterRestart = (bridge: FakeBridge) =>
      bridge.syncs.find(
        (sync) => sync.trigger === "resync" && sync.at > restartedAt,
      );
    await waitUntil(
      "every bridge resynced",
      () => bridges.every((bridge) => resyncAfterRestart(bridge)),
      RECOVERY_TIMEOUT_MS,
    );
    const bridgesMs = bridges.map(
      (bridge) => resyncAfterRestart(bridge)!.at - restartedAt,
    );

    // Every app's copy of every bridge is current again, through a
    // bridge:snapshot event or a resubscribe.
    const refreshAfterRestart = (view: AppView, bridgeId: string) =>
      view.refreshes.find(
        (refresh) => refresh.bridgeId === bridgeId && refresh.at > restartedAt,
      );
    const isCurrent = (view: AppView, bridge: FakeBridge): boolean =>
      refreshAfterRestart(view, bridge.bridgeId) !== undefined &&
      isDeepStrictEqual(
        view.sortedLights(bridge.bridgeId),
        bridge.sortedLights(),
      );
    await waitUntil(
      "every app's copy current",
      () => views.every((view) => bridges.every((b) => isCurrent(view, b))),
      5000,
    ).catch(() => undefined);
    const staleCopies: string[] = [];
    for (const view of views) {
      for (const bridge of bridges) {
        if (view.serverId !== ownerOf.get(bridge.bridgeId)) {
          if (!isCurrent(view, bridge))
            staleCopies.push(`${bridge.bridgeId} on ${view.serverId}`);
          continue;
        }
        // The owner delivers its broadcasts to its own apps without Redis.
        assert.ok(
          refreshAfterRestart(view, bridge.bridgeId),
          `app on ${view.serverId} got no bridge:snapshot or resubscribe for ${bridge.bridgeId}`,
        );
        assert.deepEqual(
          view.sortedLights(bridge.bridgeId),
          bridge.sortedLights(),
          `app on ${view.serverId} sees the lights of ${bridge.bridgeId}`,
        );
      }
    }
    const appsMs = views.flatMap((view) =>
      bridges
        .filter((bridge) => isCurrent(view, bridge))
        .map(
          (bridge) =>
            refreshAfterRestart(view, bridge.bridgeId)!.at - restartedAt,
        ),
    );

    // The store contains the resent lights, at version 1 of the empty Redis.
    for (const bridge of bridges) {
      const response = await send(`${url}/api/v1/bridges/${bridge.bridgeId}`, {
        headers: bearer(token),
      });
      assert.equal(response.status, 200, response.text);
      const state = response.body as BridgeState;
      assert.equal(state.online, true, `${bridge.bridgeId} online`);
      assert.equal(state.version, 1, `${bridge.bridgeId} version`);
      assert.deepEqual(
        [...state.lights].sort((a, b) => a.id.localeCompare(b.id)),
        bridge.sortedLights(),
      );
    }
    assert.deepEqual(
      switched.lights.get("c")?.dimming,
      { brightness },
      "the change made during the outage is on the bridge",
    );

    // Commands work again from every worker to every bridge.
    for (const view of views) {
      for (const bridge of bridges) {
        const result = await outcomeOf(
          view.client.setLight(bridge.bridgeId, "b", {
            dimming: { brightness: brightness + 1 },
          }),
        );
        assert.equal(
          result.code,
          "ok",
          `command from ${view.serverId} to ${bridge.bridgeId}`,
        );
      }
    }
    assertProcessesUnchanged();

    const probesDuring = [...early, ...late];
    assertUnavailable(probesDuring);
    const socketAnswers = spread(
      probesDuring
        .filter(({ label }) => label.includes("socket on"))
        .map(({ outcome }) => outcome.elapsedMs),
    );
    const httpAnswers = spread(
      probesDuring
        .filter(({ label }) => label.includes("HTTP on"))
        .map(({ outcome }) => outcome.elapsedMs),
    );
    const handshakeAnswers = spread(
      probesDuring
        .filter(({ label }) => label.includes("handshake"))
        .map(({ outcome }) => outcome.elapsedMs),
    );
    const resynced = spread(bridgesMs);
    const current = spread(appsMs);
    printFigure(
      `redis outage ${seconds} s (2 workers, ${BRIDGE_COUNT} bridges, Redis back empty): ` +
        `readyz back in ${readyMs} ms, shard channels back in ${channelsMs} ms, ` +
        `all bridges resynced in ${resynced.max} ms (median ${resynced.median} ms), ` +
        `apps current in ${current.max} ms ` +
        `(${staleCopies.length} of ${bridges.length * (views.length - 1)} copies on other workers left stale), ` +
        `UNAVAILABLE answered in at most ${socketAnswers.max} ms on sockets (median ${socketAnswers.median} ms) ` +
        `and ${httpAnswers.max} ms over HTTP, bridge handshakes rejected in at most ${handshakeAnswers.max} ms`,
    );
    return { staleCopies };
  };

  /** App copies on a worker other than the bridge's owner left stale, per outage. */
  const staleAfter = new Map<number, string[]>();

  it("recovers from a 5 s outage", async function () {
    this.timeout(60_000);
    const { staleCopies } = await runOutage(5_000, 61);
    staleAfter.set(5_000, staleCopies);
  });

  it("updates apps on every worker after 5 s", () => {
    assert.deepEqual(staleAfter.get(5_000), []);
  });

  it("recovers from a 60 s outage", async function () {
    this.timeout(120_000);
    const { staleCopies } = await runOutage(60_000, 62);
    staleAfter.set(60_000, staleCopies);
  });

  it("updates apps on every worker after 60 s", () => {
    assert.deepEqual(staleAfter.get(60_000), []);
  });

  it("answers routed commands at once", async function () {
    this.timeout(60_000);
    // A command waits on another worker's bridge, which holds its answer,
    // when Redis goes away: the reply can no longer reach the app's worker.
    const bridge = bridges.find(
      (candidate) => ownerOf.get(candidate.bridgeId) === serverIds[0],
    )!;
    const app = views.find((view) => view.serverId !== serverIds[0])!;
    bridge.withholdAnswers();
    const received = bridge.commands.length;
    const sentAt = Date.now();
    const command = outcomeOf(
      app.client.setLight(
        bridge.bridgeId,
        "a",
        { on: { on: true } },
        { timeoutMs: 15_000 },
      ),
      sentAt,
    );
    await waitUntil(
      "the command reaching its bridge",
      () => bridge.commands.length > received,
      5000,
    );

    await redis.stop();
    const stoppedAt = Date.now();
    const outcome = await command;
    const answeredAfterStopMs = Math.max(
      0,
      sentAt + outcome.elapsedMs - stoppedAt,
    );
    bridge.answerCommands();
    assert.equal(outcome.code, "UNAVAILABLE", "routed command in flight");
    assert.ok(
      answeredAfterStopMs < UNAVAILABLE_BOUND_MS,
      `answered ${answeredAfterStopMs} ms after Redis stopped`,
    );

    await redis.restart();
    await waitForReadiness(url, serverIds, 200, RECOVERY_TIMEOUT_MS);
    await waitUntil(
      "every expected shard channel subscribed again",
      async () => (await missingChannels()).length === 0,
      RECOVERY_TIMEOUT_MS,
      50,
    );
    printFigure(
      `redis outage: a command routed to another worker answered UNAVAILABLE ${answeredAfterStopMs} ms after Redis stopped`,
    );
  });

  it("forgets rooms left during an outage", async function () {
    this.timeout(60_000);
    // A room whose only member leaves while Redis is down: an app's room
    // of a bridge no other app watches. The bridge, which leaves too, has
    // no room.
    const watchedId = randomBridgeId();
    const leaving = await startAppView({ url, bridgeIds: [watchedId] });
    await leaving.subscribe([watchedId]);
    const leavingBridgeId = randomBridgeId();
    const leavingBridge = await startFakeBridge({
      url,
      bridgeId: leavingBridgeId,
    });
    const rooms = [
      `${KEY_PREFIX}:sio#/app#bridge:${watchedId}#`,
      `${KEY_PREFIX}:sio#/bridge#bridge:${leavingBridgeId}#`,
    ];
    const subscribers = async (): Promise<number[]> => {
      const client = createClient({ url: redis.url });
      client.on("error", () => undefined);
      await client.connect();
      try {
        const counts = await client.pubSubShardNumSub(rooms);
        return rooms.map((room) => Number(counts[room] ?? 0));
      } finally {
        await client.close();
      }
    };
    assert.deepEqual(await subscribers(), [1, 0], "rooms before the outage");

    await redis.stop();
    leaving.close();
    leavingBridge.close();
    await sleep(2000);
    await redis.restart();
    await waitForReadiness(url, serverIds, 200, RECOVERY_TIMEOUT_MS);
    await waitUntil(
      "every expected shard channel subscribed again",
      async () => (await missingChannels()).length === 0,
      RECOVERY_TIMEOUT_MS,
      50,
    );
    await sleep(500);
    assert.deepEqual(await subscribers(), [0, 0], "rooms after the outage");
    const response = await send(`${url}/api/v1/bridges/${leavingBridgeId}`, {
      headers: bearer(await appToken("room-reader", [leavingBridgeId], "read")),
    });
    assert.equal((response.body as BridgeState).online, false);
  });

  it("logs no unhandled promise rejection", () => {
    assert.deepEqual(
      relay.logs.filter((line) => line.msg === "unhandled promise rejection"),
      [],
    );
  });
});

describe("fault: Redis outage under the relay's clients", function () {
  this.timeout(30_000);
  let redis: RedisServer;
  let clients: RedisClients;

  before(async () => {
    redis = await startRedisServer();
    clients = await connectRedis(redis.url, 1000, pino({ level: "silent" }));
  });
  after(async () => {
    await clients?.close();
    await redis?.stop();
  });

  it("repeats failed sharded requests", async () => {
    const { subscriber } = clients;
    const listener = (): void => undefined;
    await subscriber.sSubscribe(["test:kept", "test:left"], listener);

    // Requests sent without awaiting, as the Socket.IO adapter sends them,
    // fail once the client's next connection attempt is refused.
    await redis.stop();
    const results = await Promise.allSettled([
      subscriber.sSubscribe("test:joined", listener),
      subscriber.sUnsubscribe("test:left"),
    ]);
    assert.deepEqual(
      results.map((result) => result.status),
      ["rejected", "rejected"],
    );

    await redis.restart();
    const expected = { "test:kept": 1, "test:joined": 1, "test:left": 0 };
    const counts = async () => {
      const probe = createClient({ url: redis.url });
      probe.on("error", () => undefined);
      await probe.connect();
      try {
        const found = await probe.pubSubShardNumSub(Object.keys(expected));
        return Object.fromEntries(
          Object.entries(found).map(([channel, count]) => [
            channel,
            Number(count),
          ]),
        );
      } finally {
        await probe.close();
      }
    };
    await waitUntil(
      "the subscriber's channels as last requested",
      async () => isDeepStrictEqual(await counts(), expected),
      RECOVERY_TIMEOUT_MS,
      50,
    ).catch(() => undefined);
    assert.deepEqual(await counts(), expected);
  });
});

describe("fault: Redis back for one relay before another", function () {
  this.timeout(60_000);
  let redis: RedisServer;
  let proxy: TcpProxy;
  let direct: RelayProcess;
  let cutOff: RelayProcess;
  const clients: { close(): void }[] = [];

  before(async () => {
    redis = await startRedisServer();
    proxy = await startTcpProxy(redis.port);
    direct = await startRelay({ redisUrl: redis.url, workers: 1 });
    // This relay reaches Redis through the proxy, which the test cuts.
    cutOff = await startRelay({ redisUrl: proxy.redisUrl, workers: 1 });
  });
  after(async () => {
    for (const client of clients) client.close();
    await Promise.all([direct?.stop(), cutOff?.stop()]);
    await proxy?.close();
    await redis?.stop();
  });

  it("updates apps of the later relay", async () => {
    const bridgeId = randomBridgeId();
    const bridge = await startFakeBridge({ url: direct.url, bridgeId });
    clients.push(bridge);
    const early = await startAppView({
      url: direct.url,
      bridgeIds: [bridgeId],
    });
    const late = await startAppView({ url: cutOff.url, bridgeIds: [bridgeId] });
    clients.push(early, late);
    await early.subscribe([bridgeId]);
    await late.subscribe([bridgeId]);

    // Redis restarts empty, and the proxied relay stays cut off meanwhile.
    await proxy.cut();
    await redis.stop();
    const report = await outcomeOf(
      bridge.switchLight({ id: "c", dimming: { brightness: 77 } }),
    );
    assert.equal(report.code, "UNAVAILABLE", "state:changed during the outage");
    await redis.restart();
    const restartedAt = Date.now();
    await waitUntil(
      "the bridge resynced through the direct relay",
      () =>
        bridge.syncs.some(
          (sync) => sync.trigger === "resync" && sync.at > restartedAt,
        ),
      RECOVERY_TIMEOUT_MS,
    );
    await waitUntil(
      "the app of the direct relay current",
      () =>
        isDeepStrictEqual(early.sortedLights(bridgeId), bridge.sortedLights()),
      5000,
    );

    // The cut-off relay reconnects after the bridge's snapshot went out.
    await proxy.restore();
    const restoredAt = Date.now();
    const readyMs = await waitForReadiness(
      cutOff.url,
      [late.serverId],
      200,
      RECOVERY_TIMEOUT_MS,
    );
    const currentMs = await waitUntil(
      "the app of the later relay current",
      () =>
        isDeepStrictEqual(late.sortedLights(bridgeId), bridge.sortedLights()),
      10_000,
    ).catch(() => -1);
    assert.deepEqual(
      late.sortedLights(bridgeId),
      bridge.sortedLights(),
      "the app of the relay that reconnected last sees the bridge's lights",
    );
    const command = await outcomeOf(
      late.client.setLight(bridgeId, "a", { on: { on: false } }),
    );
    assert.equal(command.code, "ok", "command from the later relay");
    printFigure(
      `redis back for one relay ${restoredAt - restartedAt} ms before another: ` +
        `the later relay ready in ${readyMs} ms and its app current in ${currentMs} ms after it reconnected`,
    );
  });
});

/** Command timeout of the relays of a cut test, long enough for the cut and the reconnect. */
const CUT_COMMAND_TIMEOUT_MS = 8000;
/** How long a cut test keeps one relay cut off from Redis. */
const CUT_MS = 1000;

/** Two relays of one worker on one Redis, one of them behind a proxy that a test cuts. */
interface CutRelays {
  redis: RedisServer;
  proxy: TcpProxy;
  appRelay: RelayProcess;
  bridgeRelay: RelayProcess;
  clients: { close(): void }[];
}

/**
 * Starts the relays of a cut test before the suite's tests, with the
 * relay on `cutSide` reaching Redis through the proxy, and stops them after.
 */
function relaysWithCut(cutSide: "app" | "bridge"): CutRelays {
  const relays = { clients: [] } as unknown as CutRelays;
  before(async () => {
    relays.redis = await startRedisServer();
    relays.proxy = await startTcpProxy(relays.redis.port);
    const env = { COMMAND_TIMEOUT_MS: String(CUT_COMMAND_TIMEOUT_MS) };
    const urlOf = (side: "app" | "bridge"): string =>
      side === cutSide ? relays.proxy.redisUrl : relays.redis.url;
    relays.appRelay = await startRelay({
      redisUrl: urlOf("app"),
      workers: 1,
      env,
    });
    relays.bridgeRelay = await startRelay({
      redisUrl: urlOf("bridge"),
      workers: 1,
      env,
    });
  });
  after(async () => {
    for (const client of relays.clients) client.close();
    await Promise.all([relays.appRelay?.stop(), relays.bridgeRelay?.stop()]);
    await relays.proxy?.close();
    await relays.redis?.stop();
  });
  return relays;
}

/** Returns the first log line of `relay` that starts with `prefix`, waiting up to 2 s for it. */
async function logLine(
  relay: RelayProcess,
  prefix: string,
): Promise<LogLine | undefined> {
  const find = (): LogLine | undefined =>
    relay.logs.find((line) => line.msg.startsWith(prefix));
  await waitUntil(
    `log line "${prefix}"`,
    () => find() !== undefined,
    2000,
  ).catch(() => undefined);
  return find();
}

/**
 * Connects a bridge that withholds its answers and an app, sends a
 * command with `commandId`, and resolves once the command reached the
 * bridge.
 */
async function commandWaitingAtBridge(
  relays: CutRelays,
  commandId?: string,
): Promise<{
  bridge: FakeBridge;
  bridgeId: string;
  command: Promise<Outcome>;
  sentAt: number;
}> {
  const bridgeId = randomBridgeId();
  const bridge = await startFakeBridge({
    url: relays.bridgeRelay.url,
    bridgeId,
  });
  relays.clients.push(bridge);
  const app = await startAppView({
    url: relays.appRelay.url,
    bridgeIds: [bridgeId],
  });
  relays.clients.push(app);
  bridge.withholdAnswers();
  const sentAt = Date.now();
  const command = outcomeOf(
    app.client.setLight(
      bridgeId,
      "a",
      { on: { on: false } },
      { timeoutMs: CUT_COMMAND_TIMEOUT_MS + 5000, commandId },
    ),
    sentAt,
  );
  await waitUntil(
    "the command reaching its bridge",
    () => bridge.commands.length > 0,
    5000,
  );
  return { bridge, bridgeId, command, sentAt };
}

describe("fault: Redis lost while a command is out", function () {
  this.timeout(60_000);
  // The bridge's relay reaches Redis through the proxy.
  const relays = relaysWithCut("bridge");

  it("resends the reply after Redis returns", async () => {
    const { proxy, bridgeRelay } = relays;
    const { bridge, command } = await commandWaitingAtBridge(relays);

    // The bridge's relay loses its Redis connection as it publishes the
    // reply, after the answer's state write went through, and stays cut
    // off for CUT_MS. The app's relay keeps its subscription and waits.
    const replyDropped = proxy.dropOnRequest('"type":"reply"');
    bridge.answerCommands();
    await replyDropped;
    await proxy.cut();
    await sleep(CUT_MS);
    await proxy.restore();

    const outcome = await command;
    assert.equal(outcome.code, "ok", "command answered across the cut");
    assert.ok(
      outcome.elapsedMs < CUT_COMMAND_TIMEOUT_MS,
      `answered after ${outcome.elapsedMs} ms`,
    );
    // The relay logs the resend after the publish, so the line can come
    // after the answer.
    const resent = await logLine(bridgeRelay, "sent a command answer back");
    assert.ok(resent !== undefined, "the bridge's relay logged the resend");
    assert.ok(
      (resent.attempts as number) > 1,
      `published in ${String(resent.attempts)} attempts`,
    );
    printFigure(
      `redis cut off from the bridge's relay for ${CUT_MS} ms: the answer reached the app ${outcome.elapsedMs} ms after the command, in ${String(resent.attempts)} publishes`,
    );
  });
});

describe("fault: Redis lost by the app's relay while a command is out", function () {
  this.timeout(60_000);
  // The app's relay reaches Redis through the proxy.
  const relays = relaysWithCut("app");

  /**
   * Sends a command from the app's relay, cuts that relay off from Redis
   * once the command reached the bridge, lets the bridge answer while the
   * relay cannot receive the reply, and restores the path after CUT_MS.
   */
  async function commandAcrossCut(
    commandId: string | undefined,
  ): Promise<{ outcome: Outcome; restoredAt: number; sentAt: number }> {
    const { proxy } = relays;
    const { bridge, bridgeId, command, sentAt } = await commandWaitingAtBridge(
      relays,
      commandId,
    );
    await proxy.cut();
    bridge.answerCommands();
    // The bridge's relay remembers the answer of a command with an ID, then
    // publishes the reply to a subscription that is gone.
    if (commandId !== undefined)
      await waitForStoredAnswer(`${KEY_PREFIX}:{${bridgeId}}:cmd:${commandId}`);
    await sleep(CUT_MS);
    await proxy.restore();
    const restoredAt = Date.now();
    return { outcome: await command, restoredAt, sentAt };
  }

  async function waitForStoredAnswer(key: string): Promise<void> {
    const admin = createClient({ url: relays.redis.url });
    await admin.connect();
    try {
      await waitUntil(
        "the bridge's answer remembered",
        async () => (await admin.exists(key)) === 1,
        5000,
        20,
      );
    } finally {
      await admin.close();
    }
  }

  it("answers a command with a commandId once the subscription is back", async () => {
    const { outcome, restoredAt, sentAt } =
      await commandAcrossCut("across-the-cut");
    assert.equal(outcome.code, "ok", "command answered across the cut");
    const afterRestoreMs = sentAt + outcome.elapsedMs - restoredAt;
    assert.ok(
      outcome.elapsedMs < CUT_COMMAND_TIMEOUT_MS,
      `answered after ${outcome.elapsedMs} ms`,
    );
    const recovered = await logLine(
      relays.appRelay,
      "looked up the answers of commands",
    );
    assert.equal(recovered?.answered, 1, "the app's relay found the answer");
    printFigure(
      `redis cut off from the app's relay for ${CUT_MS} ms while its bridge answered: the stored answer reached the app ${afterRestoreMs} ms after the path came back`,
    );
  });

  it("answers a command without a commandId UNAVAILABLE at once", async () => {
    const { outcome, restoredAt, sentAt } = await commandAcrossCut(undefined);
    assert.equal(outcome.code, "UNAVAILABLE");
    assert.ok(
      sentAt + outcome.elapsedMs <= restoredAt,
      "answered before the path came back",
    );
  });
});

describe("fault: subscriber of the bridge's relay lost", function () {
  this.timeout(60_000);
  // The bridge's relay reaches Redis through the proxy.
  const relays = relaysWithCut("bridge");

  it("answers UNAVAILABLE while only the subscriber is away", async () => {
    const { proxy, bridgeRelay, appRelay } = relays;
    const bridgeId = randomBridgeId();
    const bridge = await startFakeBridge({ url: bridgeRelay.url, bridgeId });
    relays.clients.push(bridge);
    const app = await startAppView({
      url: appRelay.url,
      bridgeIds: [bridgeId],
    });
    relays.clients.push(app);
    const serverId = bridgeRelay.workers()[0]?.serverId;
    assert.ok(serverId !== undefined, "the bridge relay's server ID");
    const marker = `${KEY_PREFIX}:server:${serverId}:unsubscribed`;
    const admin = createClient({ url: relays.redis.url });
    await admin.connect();
    let away: Outcome;
    try {
      // The subscriber drops and cannot connect again, while the main
      // connection keeps working.
      proxy.cutOnly("ssubscribe");
      await waitUntil(
        "the lost subscription marked",
        async () => (await admin.exists(marker)) === 1,
        5000,
      );
      away = await outcomeOf(
        app.client.setLight(bridgeId, "a", { on: { on: false } }),
      );
      assert.equal(away.code, "UNAVAILABLE", "command while away");

      proxy.admitNew();
      await waitUntil(
        "the marker deleted",
        async () => (await admin.exists(marker)) === 0,
        RECOVERY_TIMEOUT_MS,
      );
    } finally {
      await admin.close();
    }
    const back = await outcomeOf(
      app.client.setLight(bridgeId, "a", { on: { on: true } }),
    );
    assert.equal(back.code, "ok", "command once the subscriber is back");
    printFigure(
      `subscriber of the bridge's relay away, its main connection up: a command answered UNAVAILABLE in ${away.elapsedMs} ms`,
    );
  });
});

describe("fault: Redis unreachable at start", function () {
  this.timeout(30_000);
  /** STARTUP_WAIT_LOG_INTERVAL_MS of the relay, in ms. */
  const INTERVAL_MS = 500;
  const PASSWORD = "start-wait-password-1234";

  it("logs the wait until Redis starts", async () => {
    const port = await findFreePort();
    const dir = await mkdtemp(join(tmpdir(), "relay-test-redis-"));
    const relay = launchRelay({
      // The default user has no password, so Redis accepts any one with it.
      redisUrl: `redis://default:${PASSWORD}@127.0.0.1:${port}`,
      workers: 1,
      env: { STARTUP_WAIT_LOG_INTERVAL_MS: String(INTERVAL_MS) },
    });
    const isWorkerWait = (line: LogLine): boolean =>
      line.role === "worker" && line.msg.startsWith("waiting for Redis");
    const isPrimaryWait = (line: LogLine): boolean =>
      line.role === "primary" && line.msg.startsWith("no worker is ready yet");
    let redis: Awaited<ReturnType<typeof spawnRedis>> | undefined;
    try {
      // A line after two intervals shows that the warning repeats.
      await relay.waitForLog(isWorkerWait, 10_000);
      const second = await relay.waitForLog(
        (line) =>
          isWorkerWait(line) && (line.waitedMs as number) >= 2 * INTERVAL_MS,
        10_000,
      );
      assert.equal(second.redis, `redis://default@127.0.0.1:${port}`);
      const lastError = second.err as { message?: string } | undefined;
      assert.match(String(lastError?.message), /ECONNREFUSED/);
      const primaryLine = await relay.waitForLog(isPrimaryWait, 5000);
      assert.equal(primaryLine.workers, 1);
      const errorLines = relay.logs.filter(
        (line) => line.msg === "redis connection error",
      );
      assert.equal(errorLines.length, 2, "one error line per connection");

      redis = await spawnRedis(port, dir);
      const redisStartedAt = Date.now();
      const listening = await relay.waitForLog(
        (line) => line.msg.startsWith("relay listening"),
        15_000,
      );
      const readyMs = Date.now() - redisStartedAt;
      const health = await fetch(
        `http://127.0.0.1:${String(listening.port)}/healthz`,
      );
      assert.equal(health.status, 200);

      // No waiting line once ready.
      const waitLines = relay.logs.filter(
        (line) => isWorkerWait(line) || isPrimaryWait(line),
      ).length;
      await sleep(2 * INTERVAL_MS);
      assert.equal(
        relay.logs.filter((line) => isWorkerWait(line) || isPrimaryWait(line))
          .length,
        waitLines,
        "waiting lines after the relay listened",
      );
      const printed = [
        ...relay.logs.map((line) => JSON.stringify(line)),
        ...relay.output,
      ];
      assert.ok(
        !printed.some((text) => text.includes(PASSWORD)),
        "no password in the output",
      );
      printFigure(
        `redis unreachable at start: ${waitLines} waiting lines at a ${INTERVAL_MS} ms interval; ready ${readyMs} ms after Redis started`,
      );
    } finally {
      relay.child.kill("SIGKILL");
      await relay.exited;
      if (redis !== undefined) await stopProcess(redis);
      await rm(dir, { recursive: true, force: true });
    }
  });
});
