import assert from "node:assert/strict";
import type { Socket } from "node:net";
import type { Socket as ClientSocket } from "socket.io-client";
import {
  connectApp,
  connectBridge,
  randomBridgeId,
  request,
  requestData,
} from "../support/clients.ts";
import { answerLightSet, untypedLightMap } from "../support/fake-bridge.ts";
import {
  printFigure,
  sleep,
  startRelayOnRedis,
  stopRelayOnRedis,
  waitUntil,
  type RelayOnRedis,
} from "../support/faults.ts";
import { send } from "../support/http.ts";
import { startRelay, type RelayProcess } from "../support/relay-process.ts";
import { closedWithin, openIdle } from "../support/tcp-sockets.ts";

const MAX_CONNECTIONS = 8;
/** Time within which a rejected connection must be closed, in ms. */
const REJECTION_MS = 1000;
/**
 * Time within which a connection handed to a worker that died must be
 * closed once the primary runs again, in ms. The primary closes it as
 * soon as it reads the worker's closed IPC channel. The rest is margin
 * for a loaded 2-core machine.
 */
const HANDOFF_CLOSE_MS = 2000;

/** Opens `count` idle connections, one after the other. */
async function openIdleConnections(
  port: number,
  count: number,
): Promise<Socket[]> {
  const sockets: Socket[] = [];
  for (let index = 0; index < count; index += 1) {
    sockets.push(await openIdle(port));
  }
  return sockets;
}

/** Connects a bridge with light `a` that answers commands, and an app that may command it. */
async function bridgeAndApp(
  url: string,
): Promise<{ bridgeId: string; bridge: ClientSocket; app: ClientSocket }> {
  const bridgeId = randomBridgeId();
  const bridge = await connectBridge(url, bridgeId);
  const lights = untypedLightMap("a");
  await requestData(bridge, "state:snapshot", { lights: [...lights.values()] });
  answerLightSet(bridge, lights);
  const app = await connectApp(url, [bridgeId], "read control", {
    transports: ["websocket"],
  });
  return { bridgeId, bridge, app };
}

/** Sends a command from `app` and asserts that the bridge answered it. */
async function assertCommandAnswered(
  app: ClientSocket,
  bridgeId: string,
): Promise<void> {
  const ack = await request(app, "light:set", {
    bridgeId,
    lightId: "a",
    change: { on: { on: true } },
  });
  assert.equal(ack.ok, true, JSON.stringify(ack));
}

/** Reads the counter `name` from the relay's /metrics, NaN when it is missing. */
async function counter(relay: RelayProcess, name: string): Promise<number> {
  const metrics = await send(`${relay.url}/metrics`);
  const sample = new RegExp(`^${name} (\\d+)$`, "m").exec(metrics.text);
  return Number(sample?.[1]);
}

/**
 * Connects a new bridge, trying again until the relay has seen closed
 * connections close and admits one, for at most 5 s.
 */
async function connectOnceFreed(url: string): Promise<ClientSocket> {
  let bridge: ClientSocket | undefined;
  await waitUntil(
    "a connection admitted",
    async () => {
      bridge = await connectBridge(url, randomBridgeId()).catch(
        () => undefined,
      );
      return bridge !== undefined;
    },
    5000,
    100,
  );
  return bridge!;
}

/** Returns how many log lines of the process `pid` (any, by default) report rejected connections. */
function rejectionLines(relay: RelayProcess, pid?: number): number {
  return relay.logs.filter(
    (line) =>
      line.msg.startsWith("rejected a connection") &&
      (pid === undefined || line.pid === pid),
  ).length;
}

describe("fault: a connection flood reaches MAX_CONNECTIONS", function () {
  this.timeout(60_000);
  const sockets: Socket[] = [];
  const clients: ClientSocket[] = [];

  afterEach(() => {
    for (const socket of sockets.splice(0)) socket.destroy();
    for (const client of clients.splice(0)) client.close();
  });

  describe("embedded relay", () => {
    let relay: RelayProcess;

    before(async () => {
      relay = await startRelay({
        env: { MAX_CONNECTIONS: String(MAX_CONNECTIONS) },
      });
    });

    after(async () => {
      await relay?.stop();
    });

    it("closes connections past the cap", async () => {
      const { bridgeId, bridge, app } = await bridgeAndApp(relay.url);
      clients.push(bridge, app);
      const idle = await openIdleConnections(relay.port, MAX_CONNECTIONS - 2);
      sockets.push(...idle);
      const flood = await openIdleConnections(relay.port, 5);
      sockets.push(...flood);
      const closedAfter = await Promise.all(
        flood.map((socket) => closedWithin(socket, REJECTION_MS)),
      );
      const openIdleCount = (
        await Promise.all(idle.map((socket) => closedWithin(socket, 100)))
      ).filter((ms) => ms === -1).length;
      printFigure(
        `embedded relay at MAX_CONNECTIONS ${MAX_CONNECTIONS}: 5 more connections closed after ${closedAfter.join(", ")} ms`,
      );
      assert.ok(
        closedAfter.every((ms) => ms >= 0),
        `connections past the cap stayed open: ${closedAfter.join(", ")}`,
      );
      assert.equal(openIdleCount, MAX_CONNECTIONS - 2);
      await assertCommandAnswered(app, bridgeId);
      assert.equal(rejectionLines(relay), 1, "one log line per window");

      for (const socket of sockets.splice(0)) socket.destroy();
      clients.push(await connectOnceFreed(relay.url));
      // The flood's 5, and any attempt of the new bridge made before the
      // relay saw the idle connections close.
      const rejected = await counter(relay, "relay_connections_rejected_total");
      assert.ok(rejected >= 5, `${rejected} rejected`);
    });
  });

  describe("clustered relay, one worker", () => {
    let deployment: RelayOnRedis;

    before(async () => {
      deployment = await startRelayOnRedis({
        workers: 1,
        env: {
          MAX_CONNECTIONS: String(MAX_CONNECTIONS),
          // Pings every 12 s. A ping to a killed worker before the primary
          // reads its closed channel ends the primary with EPIPE.
          WORKER_UNRESPONSIVE_MS: "60000",
        },
      });
    });

    after(async () => {
      await stopRelayOnRedis(deployment ?? {});
    });

    it("closes idle connections past the primary's cap", async () => {
      const { relay } = deployment;
      const idle = await openIdleConnections(relay.port, MAX_CONNECTIONS);
      sockets.push(...idle);
      const [extra] = await openIdleConnections(relay.port, 1);
      sockets.push(extra!);
      assert.ok((await closedWithin(extra!, REJECTION_MS)) >= 0);
      assert.equal(
        rejectionLines(relay, relay.pid),
        1,
        "the primary logged it",
      );
      for (const socket of sockets.splice(0)) socket.destroy();
      clients.push(await connectOnceFreed(relay.url));
      const rejected = await counter(
        relay,
        "relay_primary_connections_rejected_total",
      );
      assert.ok(rejected >= 1, `${rejected} rejected`);
    });

    it("closes handed connections past the worker's cap", async () => {
      const { relay } = deployment;
      const { bridgeId, bridge, app } = await bridgeAndApp(relay.url);
      clients.push(bridge, app);
      const others = await Promise.all(
        Array.from({ length: MAX_CONNECTIONS - 2 }, () =>
          connectBridge(relay.url, randomBridgeId()),
        ),
      );
      clients.push(...others);
      await assert.rejects(connectBridge(relay.url, randomBridgeId()));
      await assertCommandAnswered(app, bridgeId);
      const workerPid = relay.workers()[0]?.pid;
      assert.equal(rejectionLines(relay, workerPid), 1, "the worker logged it");

      clients.pop()?.close();
      clients.push(await connectOnceFreed(relay.url));
    });

    it("keeps the cap after a handoff to a dead worker", async () => {
      const { relay } = deployment;
      const [worker] = relay.workers().slice(-1);
      const readyWorkers = relay.workers().length;
      const handed = await openIdle(relay.port);
      sockets.push(handed);
      // The primary has accepted the connection. Frozen, it reads the
      // request only after the worker died, and before it reads the
      // worker's closed IPC channel, so sticky sends the socket to the
      // dead worker.
      await sleep(200);
      process.kill(relay.pid, "SIGSTOP");
      try {
        handed.write("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        await sleep(100);
        process.kill(worker!.pid, "SIGKILL");
        await sleep(300);
      } finally {
        process.kill(relay.pid, "SIGCONT");
      }
      // No other worker is live when the primary reads the closed channel,
      // so the primary closes the connection and the client reconnects.
      const handedClosed = closedWithin(handed, HANDOFF_CLOSE_MS);
      await waitUntil(
        "a replacement worker ready",
        () => relay.workers().length > readyWorkers,
        10_000,
        100,
      );
      const handedClosedAfter = await handedClosed;
      assert.ok(
        handedClosedAfter >= 0,
        `the connection handed to the dead worker was still open ${HANDOFF_CLOSE_MS} ms after the primary resumed`,
      );
      const report = relay.logs.find(
        (line) =>
          line.pid === relay.pid &&
          line.msg.startsWith("worker exited before it received connections"),
      );
      assert.equal(report?.closed, 1, "closed connections logged");

      const idle = await openIdleConnections(relay.port, MAX_CONNECTIONS);
      sockets.push(...idle);
      const [extra] = await openIdleConnections(relay.port, 1);
      sockets.push(extra!);
      const extraClosedAfter = await closedWithin(extra!, REJECTION_MS);
      const openIdleCount = (
        await Promise.all(idle.map((socket) => closedWithin(socket, 100)))
      ).filter((ms) => ms === -1).length;
      printFigure(
        `after a handoff to a dead worker: the handed connection closed ${handedClosedAfter} ms after the primary resumed; ${openIdleCount} of ${MAX_CONNECTIONS} idle connections admitted, the next closed after ${extraClosedAfter} ms (-1: kept open)`,
      );
      assert.equal(openIdleCount, MAX_CONNECTIONS);
      assert.ok(
        extraClosedAfter >= 0,
        "the primary kept a connection past its cap",
      );
    });
  });
});
