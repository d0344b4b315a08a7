import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { connect, type Socket } from "node:net";
import { randomBridgeId } from "../support/clients.ts";
import { waitUntil } from "../support/faults.ts";
import { startRedisServer, type RedisServer } from "../support/redis-server.ts";
import { startRelay, type RelayProcess } from "../support/relay-process.ts";
import { appToken } from "../support/tokens.ts";

/** The worker's limit for a first request's header is 10 s. */
const HEADERS_TIMEOUT_MS = 10_000;
/** The primary's limit for a client to close its half of an ended connection. */
const HALF_OPEN_TIMEOUT_MS = 10_000;
const BODY_TIMEOUT_MS = 2000;
const HALF_OPEN_CLIENTS = 20;

/** Returns how many file descriptors the process `pid` has open. */
function openDescriptors(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/**
 * Sends `text` on a connection that keeps its own half open, and resolves
 * with the socket once the server has responded and ended its half.
 */
function halfOpenAfter(port: number, text: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: "127.0.0.1", allowHalfOpen: true });
    socket.once("connect", () => socket.write(text));
    socket.on("data", () => undefined);
    socket.once("end", () => resolve(socket));
    socket.once("error", reject);
  });
}

/** Opens a connection, sends `text` and resolves with the ms until the server closed it. */
function timeUntilClosed(port: number, text: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const startedAt = Date.now();
    const socket: Socket = connect(port, "127.0.0.1", () => socket.write(text));
    socket.on("data", () => undefined);
    socket.on("error", () => undefined);
    socket.on("close", () => resolve(Date.now() - startedAt));
    setTimeout(() => {
      socket.destroy();
      reject(new Error("the server kept the stalled connection open"));
    }, HEADERS_TIMEOUT_MS + 10_000);
  });
}

describe("fault: clients stall their request", function () {
  this.timeout(60_000);
  let redis: RedisServer;
  let relay: RelayProcess;

  before(async () => {
    redis = await startRedisServer();
    relay = await startRelay({
      redisUrl: redis.url,
      workers: 1,
      env: { REQUEST_BODY_TIMEOUT_MS: String(BODY_TIMEOUT_MS) },
    });
  });

  after(async () => {
    await relay?.stop();
    await redis?.stop();
  });

  it("closes a header that never ends", async () => {
    const partial =
      "GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n";
    const closed = await Promise.all(
      Array.from({ length: 5 }, () => timeUntilClosed(relay.port, partial)),
    );
    for (const ms of closed) {
      assert.ok(ms >= HEADERS_TIMEOUT_MS - 500, `closed after ${ms} ms`);
    }
    const ready = await fetch(`${relay.url}/readyz`);
    assert.equal(ready.status, 200);
  });

  /** Builds the header of a light command whose body is `bodyBytes` long. */
  const commandHeader = async (bodyBytes: number): Promise<string> => {
    const bridgeId = randomBridgeId();
    const token = await appToken("stalled-body", [bridgeId]);
    return (
      `PUT /api/v1/bridges/${bridgeId}/lights/light-1 HTTP/1.1\r\n` +
      "Host: x\r\n" +
      `Authorization: Bearer ${token}\r\n` +
      "Content-Type: application/json\r\n" +
      `Content-Length: ${bodyBytes}\r\n\r\n`
    );
  };

  it("closes a body that never ends", async () => {
    const header = await commandHeader(100);
    const closed = await Promise.all(
      Array.from({ length: 3 }, () =>
        timeUntilClosed(relay.port, `${header}{"on":`),
      ),
    );
    for (const ms of closed) {
      assert.ok(ms >= BODY_TIMEOUT_MS - 500, `closed after ${ms} ms`);
      assert.ok(ms < HEADERS_TIMEOUT_MS, `closed only after ${ms} ms`);
    }
    const ready = await fetch(`${relay.url}/readyz`);
    assert.equal(ready.status, 200);
  });

  it("answers a body that arrives slowly within the limit", async () => {
    const body = JSON.stringify({ on: { on: true } });
    const header = await commandHeader(Buffer.byteLength(body));
    const answer = await new Promise<string>((resolve, reject) => {
      let received = "";
      const socket: Socket = connect(relay.port, "127.0.0.1", () => {
        socket.write(header + body.slice(0, 5));
        setTimeout(() => socket.write(body.slice(5)), BODY_TIMEOUT_MS / 2);
      });
      socket.on("data", (chunk: Buffer) => {
        received += chunk.toString();
        if (received.includes("\r\n\r\n")) {
          socket.destroy();
          resolve(received);
        }
      });
      socket.on("error", reject);
      socket.on("close", () => reject(new Error("closed without an answer")));
    });
    // The bridge is offline, which proves the body was read and parsed.
    assert.match(answer, /^HTTP\/1\.1 409 /);
  });

  it("closes idle connections in the primary", async () => {
    const body = JSON.stringify({ on: { on: true } });
    const request = (await commandHeader(Buffer.byteLength(body))) + body;
    const before = openDescriptors(relay.pid);
    // A connection that sends nothing never reaches a worker.
    const silent = Promise.all(
      Array.from({ length: 2 }, () => timeUntilClosed(relay.port, "")),
    );
    const halfOpen = await Promise.all(
      Array.from({ length: HALF_OPEN_CLIENTS }, () =>
        halfOpenAfter(relay.port, request),
      ),
    );
    try {
      assert.ok(
        openDescriptors(relay.pid) >= before + HALF_OPEN_CLIENTS,
        "the primary holds the half-open connections",
      );
      const releasedMs = await waitUntil(
        "the primary's descriptors back to their count before",
        () => openDescriptors(relay.pid) <= before + 2,
        HALF_OPEN_TIMEOUT_MS + 5000,
        100,
      );
      console.log(
        `      fault figure: ${HALF_OPEN_CLIENTS} half-open clients released by the primary ${releasedMs} ms after their responses`,
      );
      for (const ms of await silent) {
        assert.ok(ms >= HEADERS_TIMEOUT_MS - 500, `closed after ${ms} ms`);
      }
    } finally {
      for (const socket of halfOpen) socket.destroy();
    }
  });
});
