import assert from "node:assert/strict";
import { connect, type Socket } from "node:net";
import { API_BASE_PATH } from "../../server/http/api.ts";
import { randomBridgeId } from "../support/clients.ts";
import {
  isAlive,
  printFigure,
  sleep,
  startRelayOnRedis,
  stopRelayOnRedis,
  waitUntil,
  type RelayOnRedis,
} from "../support/faults.ts";
import { closedWithin, openIdle } from "../support/tcp-sockets.ts";
import { appToken } from "../support/tokens.ts";

const MAX_CONNECTIONS = 8;
/** Requests sent while one of the two workers is stopped: round-robin hands it half of them. */
const REQUEST_COUNT = 4;
/**
 * Time within which a connection handed to the killed worker must be
 * closed after a response or without one, in ms. The primary reads the
 * worker's closed IPC channel at once, and the other worker responds to
 * /healthz in a few ms. The rest is margin for a loaded 2-core machine.
 */
const SETTLE_BOUND_MS = 2000;
/** Time within which a connection past the cap must be closed, in ms. */
const REJECTION_MS = 1000;

/** A raw HTTP request on its own connection, and what came back. */
interface RawRequest {
  socket: Socket;
  /** Bytes received so far. */
  received: () => string;
  /** Resolves with the ms from `since` until the relay closed the connection. */
  closed: (since: number) => Promise<number>;
}

/**
 * Opens a connection to `port`, writes `text` on it once it is open, and
 * records what comes back.
 */
function openRawRequest(port: number, text: string): Promise<RawRequest> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1", () => {
      socket.write(text);
      resolve({ socket, received: () => received, closed });
    });
    let received = "";
    const done = new Promise<number>((settle) => {
      socket.once("close", () => settle(Date.now()));
    });
    const closed = async (since: number): Promise<number> =>
      Math.max(0, (await done) - since);
    socket.setEncoding("latin1");
    socket.on("data", (chunk: string) => {
      received += chunk;
    });
    socket.once("error", reject);
  });
}

/** Opens a connection to `port`, sends GET /healthz on it, and records the response. */
function requestHealth(port: number): Promise<RawRequest> {
  return openRawRequest(port, "GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n");
}

/** Resolves with the ms until the relay closes the connection of `request`, or -1 after `ms`. */
function settledWithin(request: RawRequest, ms: number): Promise<number> {
  const startedAt = Date.now();
  return Promise.race([request.closed(startedAt), sleep(ms).then(() => -1)]);
}

describe("fault: worker killed with connections handed to it", function () {
  this.timeout(60_000);
  let deployment: RelayOnRedis;
  const sockets: Socket[] = [];
  let stoppedPid: number | undefined;

  before(async () => {
    deployment = await startRelayOnRedis({
      workers: 2,
      env: {
        MAX_CONNECTIONS: String(MAX_CONNECTIONS),
        // The stopped worker must stay in the balancer while requests arrive.
        WORKER_UNRESPONSIVE_MS: "60000",
      },
    });
  });

  afterEach(() => {
    for (const socket of sockets.splice(0)) socket.destroy();
    if (stoppedPid !== undefined && isAlive(stoppedPid)) {
      process.kill(stoppedPid, "SIGKILL");
    }
  });

  after(async () => {
    await stopRelayOnRedis(deployment ?? {});
  });

  it("serves them elsewhere and keeps the cap", async () => {
    const { relay } = deployment;
    const [victim] = relay.workers();
    const readyWorkers = relay.workers().length;
    stoppedPid = victim!.pid;
    // A stopped worker receives nothing, so Node keeps the first socket
    // handed to it waiting for an acknowledgement and queues the others.
    process.kill(victim!.pid, "SIGSTOP");
    const requests: RawRequest[] = [];
    for (let index = 0; index < REQUEST_COUNT; index += 1) {
      const request = await requestHealth(relay.port);
      requests.push(request);
      sockets.push(request.socket);
      await sleep(50);
    }
    await sleep(300);
    const waiting = requests.filter((request) => !request.socket.closed);
    assert.ok(
      waiting.length >= 1,
      "no request was handed to the stopped worker",
    );
    for (const request of requests.filter((item) => item.socket.closed)) {
      assert.match(request.received(), /^HTTP\/1\.1 200 /);
    }

    process.kill(victim!.pid, "SIGKILL");
    const settledAfter = await Promise.all(
      waiting.map((request) => settledWithin(request, SETTLE_BOUND_MS)),
    );
    const answered = waiting.filter((request) =>
      /^HTTP\/1\.1 200 /.test(request.received()),
    ).length;
    printFigure(
      `worker killed with ${waiting.length} of ${REQUEST_COUNT} connections handed to it while stopped: ` +
        `closed after ${settledAfter.join(", ")} ms (-1: open after ${SETTLE_BOUND_MS} ms), ${answered} answered 200 by the other worker`,
    );
    for (const [index, ms] of settledAfter.entries()) {
      assert.ok(
        ms >= 0,
        `connection ${index + 1} of ${waiting.length} handed to the killed worker still open after ${SETTLE_BOUND_MS} ms`,
      );
    }
    assert.equal(answered, waiting.length, "answered by the other worker");
    const report = relay.logs.find(
      (line) =>
        line.pid === relay.pid &&
        line.msg.startsWith("worker exited before it received connections"),
    );
    assert.equal(report?.rerouted, waiting.length, "rerouted count logged");

    await waitUntil(
      "a replacement worker ready",
      () => relay.workers().length > readyWorkers,
      10_000,
      100,
    );
    const idle: Socket[] = [];
    for (let index = 0; index < MAX_CONNECTIONS; index += 1) {
      idle.push(await openIdle(relay.port));
    }
    sockets.push(...idle);
    const extra = await openIdle(relay.port);
    sockets.push(extra);
    const extraClosedAfter = await closedWithin(extra, REJECTION_MS);
    const openIdleCount = (
      await Promise.all(idle.map((socket) => closedWithin(socket, 100)))
    ).filter((ms) => ms === -1).length;
    assert.equal(openIdleCount, MAX_CONNECTIONS, "idle connections admitted");
    assert.ok(
      extraClosedAfter >= 0,
      "the primary kept a connection past its cap",
    );
  });
});

/**
 * Opens a connection to `port` and sends the headers and part of the body of
 * a light command, so that the primary forwards the request to a worker
 * and the worker waits for the rest.
 */
async function startLightCommand(port: number): Promise<RawRequest> {
  const bridgeId = randomBridgeId();
  const token = await appToken("forwarded", [bridgeId]);
  const body = JSON.stringify({ on: { on: true } });
  return openRawRequest(
    port,
    `PUT ${API_BASE_PATH}/bridges/${bridgeId}/lights/a HTTP/1.1\r\n` +
      "Host: relay\r\nContent-Type: application/json\r\n" +
      `Authorization: Bearer ${token}\r\n` +
      `Content-Length: ${body.length}\r\n\r\n` +
      body.slice(0, 4),
  );
}

describe("fault: worker killed while a request is forwarded to it", function () {
  this.timeout(60_000);
  let deployment: RelayOnRedis;
  const sockets: Socket[] = [];

  before(async () => {
    deployment = await startRelayOnRedis({ workers: 2 });
  });

  afterEach(() => {
    for (const socket of sockets.splice(0)) socket.destroy();
  });

  after(async () => {
    await stopRelayOnRedis(deployment ?? {});
  });

  it("responds 503 UNAVAILABLE", async () => {
    const { relay } = deployment;
    const [victim] = relay.workers();
    // Round-robin gives each of the two workers one of these.
    const requests = [
      await startLightCommand(relay.port),
      await startLightCommand(relay.port),
    ];
    sockets.push(...requests.map((request) => request.socket));
    await sleep(300);
    assert.deepEqual(
      requests.map((request) => request.received()),
      ["", ""],
      "the workers wait for the bodies",
    );

    process.kill(victim!.pid, "SIGKILL");
    const settledAfter = await Promise.all(
      requests.map((request) => settledWithin(request, SETTLE_BOUND_MS)),
    );
    printFigure(
      `worker killed with a forwarded request waiting for its body: closed after ${settledAfter.join(", ")} ms (-1: open after ${SETTLE_BOUND_MS} ms)`,
    );
    const answered = requests.filter((request) =>
      request.received().startsWith("HTTP/1.1 503 "),
    );
    assert.equal(answered.length, 1, "one request answered 503");
    assert.match(answered[0]!.received(), /"code":"UNAVAILABLE"/);
    assert.equal(settledAfter.filter((ms) => ms >= 0).length, 1);
    const report = relay.logs.find(
      (line) =>
        line.pid === relay.pid &&
        line.msg.startsWith("worker exited while requests forwarded"),
    );
    assert.equal(report?.answered, 1, "answered count logged");
  });
});
