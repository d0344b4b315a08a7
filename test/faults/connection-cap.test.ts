import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { connect as connectTcp, type Socket } from "node:net";
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
import { errorOf, send } from "../support/http.ts";
import { PACKET_SEPARATOR } from "../support/raw-polling.ts";
import { startRelay, type RelayProcess } from "../support/relay-process.ts";
import { closedWithin, openIdle } from "../support/tcp-sockets.ts";

const MAX_CONNECTIONS = 8;
/** Connections a relay accepts above the cap for probes and open sessions. */
const RESERVE = 3;
/** Time within which a rejected connection must be closed, in ms. */
const REJECTION_MS = 1000;
/**
 * Time within which a reserve connection that sends no complete header
 * must be closed, in ms: the relay's 2 s limit, and margin for a loaded
 * 2-core machine.
 */
const RESERVE_CLOSE_MS = 3500;
/** Start of Engine.IO's handshake over long-polling. */
const HANDSHAKE_PATH = "/socket.io/?EIO=4&transport=polling";
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

/**
 * Opens a connection that sends part of a request header and waits, so
 * the cluster primary hands it to a worker, which waits for the rest.
 */
async function openHalfRequest(port: number): Promise<Socket> {
  const socket = await openIdle(port);
  socket.on("error", () => undefined);
  socket.write("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n");
  return socket;
}

/**
 * Opens connections with `open` until a new Engine.IO handshake gets 503,
 * so that the relay's cap is reached (a handshake past it would open a
 * session). Returns the connections opened, which hold the cap for 10 s,
 * until the relay's header timeout closes them.
 */
async function fillToCap(
  url: string,
  open: () => Promise<Socket>,
): Promise<Socket[]> {
  const filler: Socket[] = [];
  for (let attempt = 0; attempt <= MAX_CONNECTIONS; attempt += 1) {
    const handshake = await send(`${url}${HANDSHAKE_PATH}`);
    if (handshake.status === 503) return filler;
    assert.equal(handshake.status, 200, handshake.text);
    filler.push(await open());
    // The primary hands a connection to the worker when it reads it.
    await sleep(50);
  }
  for (const socket of filler) socket.destroy();
  throw new Error(`the cap was not reached with ${filler.length} connections`);
}

/** Asserts that the relay accepted `sockets` and kept them open for 200 ms. */
async function assertKeptOpen(
  sockets: Socket[],
  description: string,
): Promise<void> {
  const closedAfter = await Promise.all(
    sockets.map((socket) => closedWithin(socket, 200)),
  );
  assert.ok(
    closedAfter.every((ms) => ms === -1),
    `${description} closed after ${closedAfter.join(", ")} ms`,
  );
}

/**
 * Waits until a new Engine.IO handshake succeeds, for at most 5 s, because
 * the relay handles the close of the previous test's connections a moment
 * after the test closed them.
 */
async function waitBelowCap(url: string): Promise<void> {
  await waitUntil(
    "a handshake admitted",
    async () => (await send(`${url}${HANDSHAKE_PATH}`)).status === 200,
    5000,
    100,
  );
}

/** Opens an Engine.IO session over long-polling and returns its ID. */
async function openPollingSession(url: string): Promise<string> {
  const response = await send(`${url}${HANDSHAKE_PATH}`);
  assert.equal(response.status, 200, response.text);
  assert.ok(response.text.startsWith("0"), response.text);
  return (JSON.parse(response.text.slice(1)) as { sid: string }).sid;
}

/**
 * Sends a Socket.IO connect to `/app` without a token on the long-polling
 * session `sid` and polls once, each on a new connection. Returns the
 * statuses and the packets of the poll.
 */
async function pollSession(
  url: string,
  sid: string,
): Promise<{ postStatus: number; pollStatus: number; packets: string[] }> {
  const endpoint = `${url}${HANDSHAKE_PATH}&sid=${sid}`;
  const post = await send(endpoint, {
    method: "POST",
    headers: { "Content-Type": "text/plain;charset=UTF-8" },
    body: "40/app,",
  });
  const poll = await send(endpoint);
  return {
    postStatus: post.status,
    pollStatus: poll.status,
    packets: poll.text.split(PACKET_SEPARATOR),
  };
}

/**
 * Asks for a websocket upgrade of Engine.IO, of the session `sid` when
 * given, and returns the status line of the response. The connection
 * stays open until the test destroys it.
 */
async function upgradeStatusLine(
  port: number,
  sockets: Socket[],
  sid?: string,
): Promise<string> {
  const socket = connectTcp({ host: "127.0.0.1", port });
  sockets.push(socket);
  socket.on("error", () => undefined);
  await once(socket, "connect");
  const session = sid === undefined ? "" : `&sid=${sid}`;
  socket.write(
    `GET /socket.io/?EIO=4&transport=websocket${session} HTTP/1.1\r\n` +
      `Host: 127.0.0.1:${port}\r\n` +
      "Upgrade: websocket\r\nConnection: Upgrade\r\n" +
      `Sec-WebSocket-Key: ${randomBytes(16).toString("base64")}\r\n` +
      "Sec-WebSocket-Version: 13\r\n\r\n",
  );
  let received = "";
  const deadline = Date.now() + 5000;
  while (!received.includes("\r\n")) {
    if (Date.now() > deadline) throw new Error("no upgrade response in 5 s");
    const chunk = await Promise.race([
      once(socket, "data").then(([data]) => String(data)),
      once(socket, "close").then(() => {
        throw new Error(`closed without a response, after: ${received}`);
      }),
    ]);
    received += chunk;
  }
  return received.slice(0, received.indexOf("\r\n"));
}

/**
 * Checks a relay at the cap: probes return 200, new sessions get 503, and
 * the sessions `sid` (long-polling), `app` (websocket) and `pollingApp`
 * (long-polling) keep working.
 */
async function assertServedAtCap(
  relay: RelayProcess,
  sockets: Socket[],
  session: {
    sid: string;
    bridgeId: string;
    app: ClientSocket;
    pollingApp: ClientSocket;
  },
): Promise<void> {
  for (const path of ["/healthz", "/readyz", "/metrics"]) {
    const probe = await send(`${relay.url}${path}`);
    assert.equal(probe.status, 200, `${path} answered ${probe.status}`);
  }

  const handshake = await send(`${relay.url}${HANDSHAKE_PATH}`);
  assert.equal(handshake.status, 503, handshake.text);
  assert.equal(handshake.headers["retry-after"], "5");
  assert.equal(errorOf(handshake).code, "UNAVAILABLE");
  const upgrade = await upgradeStatusLine(relay.port, sockets);
  assert.match(upgrade, /^HTTP\/1\.1 503 /);
  await assert.rejects(connectBridge(relay.url, randomBridgeId()));
  // Engine.IO rejects a session this process does not have.
  const unknown = await send(`${relay.url}${HANDSHAKE_PATH}&sid=unknown-sid`);
  assert.equal(unknown.status, 400, unknown.text);

  const polled = await pollSession(relay.url, session.sid);
  assert.equal(polled.postStatus, 200, "POST of an open session");
  assert.equal(polled.pollStatus, 200, "GET of an open session");
  assert.ok(
    polled.packets.some((packet) => packet.startsWith("44/app,")),
    `the relay rejected the connect without a token: ${polled.packets.join(" | ")}`,
  );
  const sessionUpgrade = await upgradeStatusLine(
    relay.port,
    sockets,
    session.sid,
  );
  assert.match(sessionUpgrade, /^HTTP\/1\.1 101 /);

  await assertCommandAnswered(session.app, session.bridgeId);
  await assertCommandAnswered(session.pollingApp, session.bridgeId);
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
        env: {
          MAX_CONNECTIONS: String(MAX_CONNECTIONS),
          MAX_CONNECTIONS_RESERVE: String(RESERVE),
        },
      });
    });

    after(async () => {
      await relay?.stop();
    });

    it("closes connections past the reserve", async () => {
      const { bridgeId, bridge, app } = await bridgeAndApp(relay.url);
      clients.push(bridge, app);
      const idle = await openIdleConnections(relay.port, MAX_CONNECTIONS - 2);
      sockets.push(...idle);
      const reserve = await openIdleConnections(relay.port, RESERVE);
      sockets.push(...reserve);
      await assertKeptOpen(reserve, "idle reserve connections");
      const flood = await openIdleConnections(relay.port, 5);
      sockets.push(...flood);
      const closedAfter = await Promise.all(
        flood.map((socket) => closedWithin(socket, REJECTION_MS)),
      );
      const reserveClosedAfter = await Promise.all(
        reserve.map((socket) => closedWithin(socket, RESERVE_CLOSE_MS)),
      );
      const openIdleCount = (
        await Promise.all(idle.map((socket) => closedWithin(socket, 100)))
      ).filter((ms) => ms === -1).length;
      printFigure(
        `embedded relay at MAX_CONNECTIONS ${MAX_CONNECTIONS} with a reserve of ${RESERVE}: 5 more connections closed after ${closedAfter.join(", ")} ms; idle reserve connections closed ${reserveClosedAfter.join(", ")} ms later`,
      );
      assert.ok(
        closedAfter.every((ms) => ms >= 0),
        `connections past the reserve stayed open: ${closedAfter.join(", ")}`,
      );
      assert.ok(
        reserveClosedAfter.every((ms) => ms >= 0),
        `idle reserve connections stayed open: ${reserveClosedAfter.join(", ")}`,
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

    it("serves probes and open sessions at the cap", async () => {
      await waitBelowCap(relay.url);
      const { bridgeId, bridge, app } = await bridgeAndApp(relay.url);
      const pollingApp = await connectApp(relay.url, [bridgeId], undefined, {
        transports: ["polling"],
      });
      clients.push(bridge, app, pollingApp);
      const sid = await openPollingSession(relay.url);
      const filler = await fillToCap(relay.url, () => openIdle(relay.port));
      sockets.push(...filler);
      await assertServedAtCap(relay, sockets, {
        sid,
        bridgeId,
        app,
        pollingApp,
      });
    });
  });

  describe("clustered relay, one worker", () => {
    let deployment: RelayOnRedis;

    before(async () => {
      deployment = await startRelayOnRedis({
        workers: 1,
        env: {
          MAX_CONNECTIONS: String(MAX_CONNECTIONS),
          MAX_CONNECTIONS_RESERVE: String(RESERVE),
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

    it("serves probes and open sessions at the worker's cap", async () => {
      const { relay } = deployment;
      await waitBelowCap(relay.url);
      const { bridgeId, bridge, app } = await bridgeAndApp(relay.url);
      const pollingApp = await connectApp(relay.url, [bridgeId], undefined, {
        transports: ["polling"],
      });
      clients.push(bridge, app, pollingApp);
      const sid = await openPollingSession(relay.url);
      const filler = await fillToCap(relay.url, () =>
        openHalfRequest(relay.port),
      );
      sockets.push(...filler);
      await assertServedAtCap(relay, sockets, {
        sid,
        bridgeId,
        app,
        pollingApp,
      });
    });

    it("closes handed connections past the worker's reserve", async () => {
      const { relay } = deployment;
      await waitBelowCap(relay.url);
      const filler = await fillToCap(relay.url, () =>
        openHalfRequest(relay.port),
      );
      sockets.push(...filler);

      const reserve: Socket[] = [];
      for (let index = 0; index < RESERVE; index += 1) {
        reserve.push(await openHalfRequest(relay.port));
        await sleep(50);
      }
      sockets.push(...reserve);
      await assertKeptOpen(reserve, "half requests in the reserve");

      const flood = await Promise.all([
        openHalfRequest(relay.port),
        openHalfRequest(relay.port),
      ]);
      sockets.push(...flood);
      const closedAfter = await Promise.all(
        flood.map((socket) => closedWithin(socket, REJECTION_MS)),
      );
      const reserveClosedAfter = await Promise.all(
        reserve.map((socket) => closedWithin(socket, RESERVE_CLOSE_MS)),
      );
      const openFillerCount = (
        await Promise.all(filler.map((socket) => closedWithin(socket, 100)))
      ).filter((ms) => ms === -1).length;

      printFigure(
        `worker at MAX_CONNECTIONS ${MAX_CONNECTIONS} with a reserve of ${RESERVE}: 2 more half requests closed after ${closedAfter.join(", ")} ms; half requests in the reserve closed ${reserveClosedAfter.join(", ")} ms later`,
      );
      assert.ok(
        closedAfter.every((ms) => ms >= 0),
        `connections past the reserve stayed open: ${closedAfter.join(", ")}`,
      );
      assert.ok(
        reserveClosedAfter.every((ms) => ms >= 0),
        `half requests in the reserve stayed open: ${reserveClosedAfter.join(", ")}`,
      );
      assert.equal(openFillerCount, filler.length, "connections below the cap");
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
