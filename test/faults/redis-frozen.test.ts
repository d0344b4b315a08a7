import assert from "node:assert/strict";
import { createClient } from "redis";
import type { BridgePresence } from "../../client-sdk/src/protocol.ts";
import type { Socket } from "socket.io-client";
import {
  connectApp,
  connectBridge,
  connectError,
  randomBridgeId,
  record,
  request,
  requestData,
  settle,
} from "../support/clients.ts";
import { answerLightSet, untypedLightMap } from "../support/fake-bridge.ts";
import {
  printFigure,
  sleep,
  startRelayOnRedis,
  stopRelayOnRedis,
  waitUntil,
} from "../support/faults.ts";
import { BRIDGE_REQUESTS_IN_FLIGHT } from "../../server/transport/bridge-namespace.ts";
import { bearer, send, sendJson } from "../support/http.ts";
import { startRedisServer, type RedisServer } from "../support/redis-server.ts";
import { startRelay, type RelayProcess } from "../support/relay-process.ts";
import { startTcpProxy, type TcpProxy } from "../support/tcp-proxy.ts";
import { appToken, bridgeToken } from "../support/tokens.ts";

/** Duration of the Redis pause of every client's commands, in ms. */
const PAUSE_MS = 4000;
/** The relay's limit on one Redis command, set for this test. */
const REDIS_COMMAND_TIMEOUT_MS = 800;
/** Allowance on top of it for the requests' other steps and scheduling. */
const SLACK_MS = 1500;
const BRIDGES = 4;

/** Pauses every client of the Redis at `url` for `ms`. */
async function pauseRedis(url: string, ms: number): Promise<void> {
  const admin = createClient({ url });
  await admin.connect();
  try {
    await admin.sendCommand(["CLIENT", "PAUSE", String(ms), "ALL"]);
  } finally {
    // QUIT would wait for the pause too, so the connection is just closed.
    admin.destroy();
  }
}

/** Resolves with the ms `work` took and what it returned. */
async function timed<T>(work: Promise<T>): Promise<{ ms: number; value: T }> {
  const startedAt = performance.now();
  const value = await work;
  return { ms: Math.round(performance.now() - startedAt), value };
}

/** Starts a relay of 2 workers whose Redis commands may wait `commandTimeoutMs`. */
function startRelayWithLimit(commandTimeoutMs: number) {
  return startRelayOnRedis({
    workers: 2,
    env: { REDIS_COMMAND_TIMEOUT_MS: String(commandTimeoutMs) },
  });
}

/** A relay of one worker whose Redis connections pass a proxy that can hold replies. */
async function startRelayBehindProxy(limitMs: number): Promise<{
  redis: RedisServer;
  proxy: TcpProxy;
  relay: RelayProcess;
}> {
  const redis = await startRedisServer();
  const proxy = await startTcpProxy(redis.port);
  try {
    const relay = await startRelay({
      redisUrl: proxy.redisUrl,
      workers: 1,
      env: { REDIS_COMMAND_TIMEOUT_MS: String(limitMs) },
    });
    return { redis, proxy, relay };
  } catch (error) {
    // The describe's after hook sees none of these if the relay fails.
    await proxy.close();
    await redis.stop();
    throw error;
  }
}

describe("fault: Redis accepts connections but does not respond", function () {
  this.timeout(30_000);
  let redis: RedisServer;
  let relay: RelayProcess;

  // The command limit is longer than the pause here, so only readiness's
  // own 1 s limit can end the check.
  before(async () => {
    ({ redis, relay } = await startRelayWithLimit(PAUSE_MS * 2));
  });

  after(() => stopRelayOnRedis({ relay, redis }));

  it("fails readiness within its timeout", async () => {
    await pauseRedis(redis.url, PAUSE_MS);
    const startedAt = Date.now();
    const ready = await fetch(`${relay.url}/readyz`, {
      signal: AbortSignal.timeout(PAUSE_MS + 2000),
    });
    const answeredMs = Date.now() - startedAt;
    printFigure(
      `Redis paused ${PAUSE_MS} ms: /readyz answered ${ready.status} after ${answeredMs} ms`,
    );
    assert.equal(ready.status, 503);
    assert.deepEqual(await ready.json(), { status: "unavailable" });
    assert.ok(answeredMs < PAUSE_MS / 2, `answered after ${answeredMs} ms`);
    await waitUntil(
      "readiness after the pause",
      async () => (await fetch(`${relay.url}/readyz`)).status === 200,
      PAUSE_MS + 5000,
      200,
    );
  });

  it("rejects reports past 64 in flight", async () => {
    const bridge = await connectBridge(relay.url, randomBridgeId());
    try {
      await requestData(bridge, "state:snapshot", {
        lights: [...untypedLightMap("a").values()],
      });
      await pauseRedis(redis.url, PAUSE_MS);
      const extra = 6;
      const reports = await Promise.all(
        Array.from({ length: BRIDGE_REQUESTS_IN_FLIGHT + extra }, (_, index) =>
          timed(
            request(
              bridge,
              "state:changed",
              { lights: [{ id: "a", dimming: { brightness: index % 101 } }] },
              PAUSE_MS * 3,
            ),
          ),
        ),
      );
      const rejected = reports.filter(
        ({ value }) => !value.ok && value.error.code === "RATE_LIMITED",
      );
      const stored = reports.filter(({ value }) => value.ok);
      printFigure(
        `Redis paused ${PAUSE_MS} ms, ${reports.length} reports sent at once: ${stored.length} stored after the pause, ${rejected.length} rejected within ${Math.max(...rejected.map(({ ms }) => ms))} ms`,
      );
      assert.equal(rejected.length, extra);
      assert.equal(stored.length, BRIDGE_REQUESTS_IN_FLIGHT);
      for (const { ms } of rejected) assert.ok(ms < PAUSE_MS / 2, `${ms} ms`);
      // The rejected reports are the last ones sent.
      assert.deepEqual(
        reports.map(({ value }) => value.ok),
        reports.map((_, index) => index < BRIDGE_REQUESTS_IN_FLIGHT),
      );
    } finally {
      bridge.close();
    }
  });
});

describe("fault: Redis stops replying to requests", function () {
  this.timeout(30_000);
  let redis: RedisServer;
  let relay: RelayProcess;

  before(async () => {
    ({ redis, relay } = await startRelayWithLimit(REDIS_COMMAND_TIMEOUT_MS));
  });

  after(() => stopRelayOnRedis({ relay, redis }));

  it("fails requests within the command timeout", async () => {
    const sockets: Socket[] = [];
    try {
      const bridgeIds = Array.from({ length: BRIDGES }, randomBridgeId);
      for (const bridgeId of bridgeIds) {
        const bridge = await connectBridge(relay.url, bridgeId);
        sockets.push(bridge);
        const lights = untypedLightMap("a");
        answerLightSet(bridge, lights);
        await requestData(bridge, "state:snapshot", {
          lights: [...lights.values()],
        });
      }
      const app = await connectApp(relay.url, bridgeIds);
      sockets.push(app);
      const token = await appToken("frozen-redis", bridgeIds);
      const newBridgeToken = await bridgeToken(randomBridgeId());

      await pauseRedis(redis.url, PAUSE_MS);
      const [commands, put, list, handshake] = await Promise.all([
        Promise.all(
          bridgeIds.map((bridgeId) =>
            timed(
              request(app, "light:set", {
                bridgeId,
                lightId: "a",
                change: { on: { on: true } },
              }),
            ),
          ),
        ),
        timed(
          sendJson(
            `${relay.url}/api/v1/bridges/${bridgeIds[0]}/lights/a`,
            "PUT",
            { on: { on: false } },
            bearer(token),
          ),
        ),
        timed(send(`${relay.url}/api/v1/bridges`, { headers: bearer(token) })),
        timed(
          connectError(relay.url, "/bridge", {
            auth: { token: newBridgeToken },
          }),
        ),
      ]);
      const slowest = Math.max(
        ...commands.map(({ ms }) => ms),
        put.ms,
        list.ms,
      );
      printFigure(
        `Redis paused ${PAUSE_MS} ms, command limit ${REDIS_COMMAND_TIMEOUT_MS} ms: socket commands answered in ${commands.map(({ ms }) => ms).join(", ")} ms, PUT ${put.value.status} in ${put.ms} ms, GET ${list.value.status} in ${list.ms} ms, handshake refused in ${handshake.ms} ms`,
      );
      // A command for a bridge on the app's worker fails its state write
      // (UNAVAILABLE). One routed to the other worker was published but not
      // confirmed, so Redis may still deliver it (TIMEOUT).
      for (const { value } of commands) {
        assert.ok(
          ["UNAVAILABLE", "TIMEOUT"].includes(
            value.ok ? "ok" : (value.error?.code ?? "?"),
          ),
          JSON.stringify(value),
        );
      }
      assert.equal(put.value.status, 503);
      assert.equal(list.value.status, 503);
      assert.equal(handshake.value.data?.code, "UNAVAILABLE");
      assert.ok(
        slowest <= REDIS_COMMAND_TIMEOUT_MS + SLACK_MS,
        `slowest answer after ${slowest} ms`,
      );
      // A handshake waits for Redis twice in a row: the address limit,
      // after which both limits count in memory for a second, and the
      // bridge's entry in the connection index, which comes before the claim.
      assert.ok(
        handshake.ms <= 2 * REDIS_COMMAND_TIMEOUT_MS + SLACK_MS,
        `handshake refused after ${handshake.ms} ms`,
      );

      await waitUntil(
        "a command after the pause",
        async () => {
          const ack = await request(app, "light:set", {
            bridgeId: bridgeIds[0],
            lightId: "a",
            change: { on: { on: true } },
          });
          return ack.ok;
        },
        PAUSE_MS + 5000,
        200,
      );
    } finally {
      for (const socket of sockets) socket.close();
    }
  });
});

describe("fault: Redis replies to a release late", function () {
  this.timeout(30_000);
  /** The relay's limit on one Redis command; releases may take 5 times as long. */
  const LIMIT_MS = 300;
  let redis: RedisServer;
  let proxy: TcpProxy;
  let relay: RelayProcess;
  const sockets: Socket[] = [];

  before(async () => {
    ({ redis, proxy, relay } = await startRelayBehindProxy(LIMIT_MS));
    // A first release loads the release script, so that later ones run
    // in Redis as sent instead of waiting for a NOSCRIPT reply.
    const first = await connectBridge(relay.url, randomBridgeId());
    first.close();
    await relay.waitForLog((line) => line.msg === "bridge disconnected");
    await settle(200);
  });

  after(async () => {
    for (const socket of sockets.splice(0)) socket.close();
    await relay?.stop();
    await proxy?.close();
    await redis?.stop();
  });

  /** Connects a bridge with light "a" and an app subscribed to it, and records the app's presence events. */
  async function subscribedBridge() {
    const bridgeId = randomBridgeId();
    const bridge = await connectBridge(relay.url, bridgeId);
    await requestData(bridge, "state:snapshot", {
      lights: [...untypedLightMap("a").values()],
    });
    const app = await connectApp(relay.url, [bridgeId]);
    sockets.push(bridge, app);
    await requestData(app, "bridge:subscribe", { bridgeId });
    const presence = record<BridgePresence>(app, "bridge:presence");
    return { bridgeId, bridge, presence };
  }

  /** Waits for an offline presence event and checks its `lastSeen`. */
  async function assertReportedOffline(presence: BridgePresence[]) {
    await waitUntil(
      "an offline presence event",
      () => presence.some((event) => !event.online),
      10_000,
    );
    const offline = presence.find((event) => !event.online);
    assert.equal(typeof offline?.lastSeen, "string");
    assert.equal(offline?.epoch, 1, "the epoch of the released claim");
  }

  const releaseFailures = () =>
    relay.logs.filter(
      (line) => line.msg === "could not release the bridge's claim",
    ).length;

  it("waits past the request limit", async () => {
    const { bridge, presence } = await subscribedBridge();
    const failuresBefore = releaseFailures();

    // Twice the limit of requests, within that of releases.
    proxy.holdReplies();
    bridge.close();
    await relay.waitForLog((line) => line.msg === "bridge disconnected");
    await settle(2 * LIMIT_MS);
    proxy.passReplies();

    await assertReportedOffline(presence);
    assert.equal(releaseFailures(), failuresBefore, "no release failed");
  });

  it("reports the bridge offline after the retry", async () => {
    const { bridge, presence } = await subscribedBridge();

    // Redis runs the release, but its reply comes after the limit of
    // releases. The retry then finds nothing to release.
    const failuresBefore = releaseFailures();
    proxy.holdReplies();
    const closedAt = Date.now();
    bridge.close();
    await waitUntil(
      "a failed release",
      () => releaseFailures() > failuresBefore,
      10_000,
    );
    proxy.passReplies();

    await assertReportedOffline(presence);
    printFigure(
      `redis replies to a release late: apps saw the bridge offline ${Date.now() - closedAt} ms after it disconnected`,
    );
  });
});

describe("fault: a worker stalls while Redis replies", function () {
  this.timeout(30_000);
  /** The relay's limit on one Redis command, in ms. */
  const LIMIT_MS = 500;
  /** How long the worker is stopped, in ms, which is longer than the limit. */
  const STALL_MS = 3 * LIMIT_MS;
  let redis: RedisServer;
  let proxy: TcpProxy;
  let relay: RelayProcess;
  let worker: number | undefined;
  const sockets: Socket[] = [];

  before(async () => {
    ({ redis, proxy, relay } = await startRelayBehindProxy(LIMIT_MS));
    worker = relay.workers()[0]?.pid;
  });

  after(async () => {
    if (worker !== undefined) process.kill(worker, "SIGCONT");
    proxy?.passReplies();
    for (const socket of sockets.splice(0)) socket.close();
    await relay?.stop();
    await proxy?.close();
    await redis?.stop();
  });

  it("stores a report across a worker stall", async () => {
    assert.notEqual(worker, undefined, "the relay has a worker");
    const bridgeId = randomBridgeId();
    const bridge = await connectBridge(relay.url, bridgeId);
    sockets.push(bridge);
    await requestData(bridge, "state:snapshot", {
      lights: [...untypedLightMap("a").values()],
    });
    // A first change reads the lights into the worker's cache, so that the
    // next one sends Redis nothing but its write.
    const { version } = await requestData<{ version: number }>(
      bridge,
      "state:changed",
      { lights: [{ id: "a", dimming: { brightness: 5 } }] },
    );
    const admin = createClient({ url: redis.url });
    await admin.connect();
    try {
      // Redis runs the write, and its reply reaches the worker while the
      // worker is stopped, to be read after it continues.
      proxy.holdReplies();
      const ack = request<{ version: number }>(bridge, "state:changed", {
        lights: [{ id: "a", dimming: { brightness: 7 } }],
      });
      await waitUntil(
        "the write in Redis",
        async () =>
          (await admin.hGet(`relay:{${bridgeId}}:lights`, "a"))?.includes(
            '"brightness":7',
          ) === true,
        LIMIT_MS / 2,
        5,
      );
      process.kill(worker!, "SIGSTOP");
      proxy.passReplies();
      await sleep(STALL_MS);
      process.kill(worker!, "SIGCONT");

      const answer = await ack;
      assert.ok(answer.ok, JSON.stringify(answer));
      assert.equal(answer.data.version, version + 1);
      const failures = relay.logs.filter(
        (line) => line.msg === "state store request failed",
      );
      assert.deepEqual(failures, []);
    } finally {
      admin.destroy();
    }
  });
});
