import assert from "node:assert/strict";
import { once } from "node:events";
import { readdirSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { connect, type Socket } from "node:net";
import { randomBridgeId } from "../support/clients.ts";
import { startFakeBridge, type FakeBridge } from "../support/fake-bridge.ts";
import {
  sleep,
  startRelayOnRedis,
  stopRelayOnRedis,
  waitUntil,
} from "../support/faults.ts";
import type { RedisServer } from "../support/redis-server.ts";
import { startRelay, type RelayProcess } from "../support/relay-process.ts";
import { appToken } from "../support/tokens.ts";

/** The worker's limit for a first request's header is 10 s. */
const HEADERS_TIMEOUT_MS = 10_000;
const BODY_TIMEOUT_MS = 2000;
/** Largest request body of the test relays, in bytes. */
const MAX_PAYLOAD_BYTES = 4096;
/**
 * LINGER_TIMEOUT_MS of the test relays, half the default, so that the
 * lingering close's bounds prove the relays read the setting.
 */
const LINGER_TIMEOUT_MS = 1000;
/**
 * Maximum time in ms for a connection to count as closed at once. It is
 * under the 1 s that the relay gives the rest of an unread body.
 */
const PROMPT_CLOSE_MS = 500;
const HALF_OPEN_CLIENTS = 20;
/** Body that the clients of the lingering-close tests stream, in bytes. */
const STREAMED_BODY_BYTES = 8 * 1024 * 1024;
/** Clients that stream such a body, one after the other. */
const STREAMING_CLIENTS = 20;
/**
 * Part of a streamed body written at once, in bytes. Small parts keep the
 * client writing when the response comes, and a reset then reaches the
 * client's write before it has read the response.
 */
const STREAM_PART_BYTES = 4096;
/** Part of a body written every 10 ms after the response, in bytes. */
const LINGERING_PART_BYTES = 64 * 1024;

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

/**
 * Opens a connection and writes `chunks`, the first at once and each next
 * one `gapMs` later. Resolves with all the server sent and the ms from the
 * first write until the server closed the connection, and rejects when the
 * connection is still open after `deadlineMs`.
 */
function exchange(
  port: number,
  chunks: string[],
  gapMs = 0,
  deadlineMs = HEADERS_TIMEOUT_MS + 10_000,
): Promise<{ response: string; closedAfterMs: number }> {
  return new Promise((resolve, reject) => {
    let response = "";
    let startedAt = 0;
    const timers: NodeJS.Timeout[] = [];
    const socket: Socket = connect(port, "127.0.0.1", () => {
      startedAt = Date.now();
      chunks.forEach((chunk, index) => {
        timers.push(setTimeout(() => socket.write(chunk), index * gapMs));
      });
    });
    socket.on("data", (chunk: Buffer) => {
      response += chunk.toString();
      // A complete response other than 400, 408, 401, 404 or 413 ends the
      // exchange, because the server may keep that connection open.
      if (
        response.includes("\r\n\r\n") &&
        !/^HTTP\/1\.1 (400|408|401|404|413) /.test(response)
      ) {
        socket.destroy();
      }
    });
    socket.on("error", () => undefined);
    socket.on("close", () => {
      for (const timer of timers) clearTimeout(timer);
      clearTimeout(deadline);
      resolve({ response, closedAfterMs: Date.now() - startedAt });
    });
    const deadline = setTimeout(() => {
      socket.destroy();
      reject(new Error(`the server kept the connection open: ${response}`));
    }, deadlineMs);
  });
}

/**
 * Sends `first` on one connection and, once its whole response has come,
 * `second` on the same connection. Resolves with the second response, and
 * rejects when the server closes the connection before it.
 */
function keepAliveExchange(
  port: number,
  first: string,
  second: string,
): Promise<string> {
  return new Promise((resolve, reject) => {
    let received = "";
    let sentSecond = false;
    const socket: Socket = connect(port, "127.0.0.1", () =>
      socket.write(first),
    );
    socket.on("data", (chunk: Buffer) => {
      received += chunk.toString();
      const headerEnd = received.indexOf("\r\n\r\n");
      if (headerEnd === -1) return;
      const length = Number(/content-length: (\d+)/i.exec(received)?.[1] ?? 0);
      if (received.length < headerEnd + 4 + length) return;
      if (sentSecond) {
        socket.destroy();
        resolve(received);
        return;
      }
      sentSecond = true;
      received = "";
      socket.write(second);
    });
    socket.on("error", () => undefined);
    socket.on("close", () =>
      reject(new Error(`closed before the second response: ${received}`)),
    );
  });
}

/** Builds the header of a light command to `bridgeId` whose body is `bodyBytes` long. */
async function commandHeader(
  bodyBytes: number,
  bridgeId = randomBridgeId(),
): Promise<string> {
  const token = await appToken("stalled-body", [bridgeId]);
  return (
    `PUT /api/v1/bridges/${bridgeId}/lights/light-1 HTTP/1.1\r\n` +
    "Host: x\r\n" +
    `Authorization: Bearer ${token}\r\n` +
    "Content-Type: application/json\r\n" +
    `Content-Length: ${bodyBytes}\r\n\r\n`
  );
}

/** Splits a light command's body into `parts`, the header in front of the first. */
async function commandInParts(parts: number): Promise<string[]> {
  const body = JSON.stringify({
    on: { on: true },
    dimming: { brightness: 50 },
  });
  const header = await commandHeader(Buffer.byteLength(body));
  const size = Math.ceil(body.length / parts);
  const chunks = Array.from({ length: parts }, (_, index) =>
    body.slice(index * size, (index + 1) * size),
  );
  chunks[0] = header + chunks[0]!;
  return chunks;
}

/**
 * Sends a light command with a bad token and part of its body, and asserts
 * a 401 that closes the connection before the body timeout. The primary of
 * a clustered relay ends a forwarded connection after its response.
 */
async function assertEarlyResponseCloses(relay: RelayProcess): Promise<void> {
  const header = (await commandHeader(100)).replace(
    /Authorization: Bearer \S+/,
    "Authorization: Bearer not-a-token",
  );
  const { response, closedAfterMs } = await exchange(relay.port, [
    `${header}{"on":`,
  ]);
  assert.match(response, /^HTTP\/1\.1 401 /);
  assert.ok(
    closedAfterMs < BODY_TIMEOUT_MS,
    `closed after ${closedAfterMs} ms`,
  );
}

/** The start of a POST to a path that no route serves, with 2 of its 10 body bytes. */
const UNKNOWN_PATH_PART =
  "POST /nothing HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab";

/**
 * Sends the start of a body to a path that no route serves, and asserts a
 * 404 that closes the connection before the body timeout, and that `relay`
 * still serves after that timeout.
 */
async function assertUnknownPathClosed(relay: RelayProcess): Promise<void> {
  const { response, closedAfterMs } = await exchange(relay.port, [
    UNKNOWN_PATH_PART,
  ]);
  assert.match(response, /^HTTP\/1\.1 404 /);
  assert.match(response, /"code":"NOT_FOUND"/);
  assert.ok(
    closedAfterMs < BODY_TIMEOUT_MS,
    `closed after ${closedAfterMs} ms`,
  );

  await sleep(BODY_TIMEOUT_MS * 1.5);
  const health = await fetch(`${relay.url}/healthz`);
  assert.equal(health.status, 200);
  const crashes = relay.logs.filter(
    (line) => line.msg === "uncaught exception, shutting down",
  );
  assert.deepEqual(crashes, []);
}

/**
 * Sends a light command whose `Content-Length` is over MAX_PAYLOAD_BYTES,
 * with the first bytes of its body, and then stalls. Asserts a 413 sent
 * before the body, on a connection that the relay closes at once.
 */
async function assertOversizedBodyRejected(relay: RelayProcess): Promise<void> {
  const header = await commandHeader(MAX_PAYLOAD_BYTES + 1);
  const { response, closedAfterMs } = await exchange(relay.port, [
    `${header}{"on":`,
  ]);
  assert.match(response, /^HTTP\/1\.1 413 /);
  assert.match(response, /"code":"PAYLOAD_TOO_LARGE"/);
  assert.match(response, /\r\nconnection: close\r\n/i);
  assert.ok(
    closedAfterMs < PROMPT_CLOSE_MS,
    `closed after ${closedAfterMs} ms`,
  );
  console.log(
    `      fault figure: oversized body answered 413 and closed after ${closedAfterMs} ms`,
  );
}

/**
 * Streams a chunked light command body in parts of 1,000 bytes every
 * 100 ms, past MAX_PAYLOAD_BYTES, and asserts that the relay answers 413
 * and closes the connection once the body passes the limit.
 */
async function assertChunkedBodyCut(relay: RelayProcess): Promise<void> {
  const header = (await commandHeader(0)).replace(
    "Content-Length: 0",
    "Transfer-Encoding: chunked",
  );
  const part = `3e8\r\n${" ".repeat(1000)}\r\n`;
  const chunks = [
    `${header}1\r\n{\r\n`,
    ...Array.from({ length: 60 }, () => part),
  ];
  const { response, closedAfterMs } = await exchange(relay.port, chunks, 100);
  assert.match(response, /^HTTP\/1\.1 413 /);
  assert.match(response, /"code":"PAYLOAD_TOO_LARGE"/);
  // The fifth part passes 4,096 bytes, 400 ms after the header.
  assert.ok(closedAfterMs < 1500, `closed after ${closedAfterMs} ms`);
  console.log(
    `      fault figure: chunked body past the limit answered 413 and closed after ${closedAfterMs} ms`,
  );
}

/** How a test client sends its body: with `Content-Length`, or chunked. */
type BodyFraming = "content-length" | "chunked";

/**
 * Sends a light command with http.request and writes a body of
 * STREAMED_BODY_BYTES as fast as the connection takes it. Resolves with
 * the response's status, or with the error code when the request failed
 * before a whole response arrived (ECONNRESET when a reset came first).
 */
async function streamOversizedCommand(
  port: number,
  framing: BodyFraming,
): Promise<string> {
  const bridgeId = randomBridgeId();
  const token = await appToken("stalled-body", [bridgeId]);
  return new Promise((resolve) => {
    const headers: Record<string, string> = {
      Authorization: `Bearer ${token}`,
      "Content-Type": "application/json",
    };
    // Node sends a body chunked when it has no Content-Length.
    if (framing === "content-length") {
      headers["Content-Length"] = String(STREAMED_BODY_BYTES);
    }
    const outgoing = httpRequest(
      {
        host: "127.0.0.1",
        port,
        method: "PUT",
        path: `/api/v1/bridges/${bridgeId}/lights/light-1`,
        headers,
        agent: false,
      },
      (incoming) => {
        incoming.resume();
        incoming.once("end", () => resolve(String(incoming.statusCode)));
        incoming.once("error", (error: NodeJS.ErrnoException) =>
          resolve(error.code ?? error.message),
        );
      },
    );
    outgoing.once("error", (error: NodeJS.ErrnoException) =>
      resolve(error.code ?? error.message),
    );
    const part = Buffer.alloc(STREAM_PART_BYTES, " ");
    let written = 0;
    const writeParts = (): void => {
      while (written < STREAMED_BODY_BYTES) {
        written += part.length;
        if (!outgoing.write(part)) {
          outgoing.once("drain", writeParts);
          return;
        }
      }
      outgoing.end();
    };
    writeParts();
  });
}

/**
 * Sends a light command whose body is over MAX_PAYLOAD_BYTES and keeps
 * writing parts of it every 10 ms (6.4 MB/s) on a connection that keeps
 * its own half open. Resolves with all the server sent and the ms from
 * the first byte of the response until the server closed the connection.
 */
async function keepStreamingAfterResponse(
  port: number,
  framing: BodyFraming,
): Promise<{ response: string; closedAfterMs: number }> {
  const header = await commandHeader(1_000_000_000);
  const part = Buffer.alloc(LINGERING_PART_BYTES, " ");
  const start =
    framing === "content-length"
      ? header
      : header.replace(
          "Content-Length: 1000000000",
          "Transfer-Encoding: chunked",
        );
  const framed =
    framing === "content-length"
      ? part
      : Buffer.concat([
          Buffer.from(`${part.length.toString(16)}\r\n`),
          part,
          Buffer.from("\r\n"),
        ]);
  return new Promise((resolve, reject) => {
    let response = "";
    let respondedAt = 0;
    const socket = connect({ port, host: "127.0.0.1", allowHalfOpen: true });
    const writer = setInterval(() => {
      if (socket.writable) socket.write(framed);
    }, 10);
    socket.once("connect", () => socket.write(start));
    socket.on("data", (chunk: Buffer) => {
      if (respondedAt === 0) respondedAt = Date.now();
      response += chunk.toString();
    });
    // Writing into a connection the server destroyed fails with EPIPE or
    // ECONNRESET, which is the close this waits for.
    socket.on("error", () => undefined);
    socket.once("close", () => {
      clearInterval(writer);
      clearTimeout(deadline);
      resolve({ response, closedAfterMs: Date.now() - respondedAt });
    });
    const deadline = setTimeout(() => {
      clearInterval(writer);
      socket.destroy();
      reject(
        new Error(
          `the server kept the connection open for 15 s while the client wrote: ${response}`,
        ),
      );
    }, 15_000);
  });
}

/**
 * Streams an oversized body on STREAMING_CLIENTS connections, one after
 * the other, and asserts that each client reads the 413 rather than a
 * reset.
 */
async function assertStreamedBodyGets413(
  relay: RelayProcess,
  framing: BodyFraming,
): Promise<void> {
  const outcomes: string[] = [];
  for (let index = 0; index < STREAMING_CLIENTS; index += 1) {
    outcomes.push(await streamOversizedCommand(relay.port, framing));
  }
  console.log(
    `      fault figure: ${framing} body of ${STREAMED_BODY_BYTES} bytes streamed by ${STREAMING_CLIENTS} clients: ${outcomes.join(", ")}`,
  );
  assert.deepEqual(outcomes, Array(STREAMING_CLIENTS).fill("413"));
}

/**
 * Keeps streaming an oversized body after the 413, and asserts that the
 * relay reads on for a while and then closes the connection within
 * LINGER_TIMEOUT_MS of the response, with 1 s to spare.
 */
async function assertLingerBounded(
  relay: RelayProcess,
  framing: BodyFraming,
): Promise<void> {
  const { response, closedAfterMs } = await keepStreamingAfterResponse(
    relay.port,
    framing,
  );
  assert.match(response, /^HTTP\/1\.1 413 /);
  assert.match(response, /\r\nconnection: close\r\n/i);
  assert.ok(
    closedAfterMs >= LINGER_TIMEOUT_MS / 2,
    `closed only ${closedAfterMs} ms after the response, without lingering`,
  );
  assert.ok(
    closedAfterMs < LINGER_TIMEOUT_MS + 1000,
    `closed ${closedAfterMs} ms after the response`,
  );
  console.log(
    `      fault figure: ${framing} body still streaming after the 413: connection closed ${closedAfterMs} ms after the response`,
  );
}

/**
 * Connects a fake bridge with one light to `relay`, runs `use` with its ID
 * and the bridge, and closes it.
 */
async function withFakeBridge(
  relay: RelayProcess,
  use: (bridgeId: string, bridge: FakeBridge) => Promise<void>,
): Promise<void> {
  const bridgeId = randomBridgeId();
  const bridge = await startFakeBridge({
    url: relay.url,
    bridgeId,
    lightIds: ["light-1"],
  });
  try {
    await use(bridgeId, bridge);
  } finally {
    bridge.close();
  }
}

/**
 * Returns how many commands `bridge` received, counted after a pause,
 * because a command the relay ran reaches the bridge within a few ms.
 */
async function commandsAfterPause(bridge: FakeBridge): Promise<number> {
  await sleep(500);
  return bridge.commands.length;
}

/**
 * Writes at once a light command whose body is over MAX_PAYLOAD_BYTES,
 * with `framing`, and behind it a light command to a bridge
 * connected to `relay`. Asserts that the client reads the 413 alone, and
 * that the bridge gets no command: the relay ends the connection with the
 * 413, so it must not run a request it cannot answer.
 */
async function assertPipelinedAfter413Dropped(
  relay: RelayProcess,
  framing: BodyFraming,
): Promise<void> {
  await withFakeBridge(relay, async (bridgeId, bridge) => {
    const oversized = " ".repeat(MAX_PAYLOAD_BYTES + 1);
    const header = await commandHeader(oversized.length);
    const first =
      framing === "content-length"
        ? header + oversized
        : header.replace(
            `Content-Length: ${oversized.length}`,
            "Transfer-Encoding: chunked",
          ) + `${oversized.length.toString(16)}\r\n${oversized}\r\n0\r\n\r\n`;
    const body = JSON.stringify({ on: { on: false } });
    const pipelined =
      (await commandHeader(Buffer.byteLength(body), bridgeId)) + body;
    const { response } = await exchange(relay.port, [first + pipelined]);
    assert.match(response, /^HTTP\/1\.1 413 /);
    assert.match(response, /\r\nconnection: close\r\n/i);
    assert.equal(response.match(/HTTP\/1\.1 \d{3}/g)?.length, 1, response);
    assert.equal(
      await commandsAfterPause(bridge),
      0,
      "the pipelined command reached the bridge",
    );
  });
}

/**
 * Writes `text` on a new connection at once, and resolves with all the
 * server sent once it has closed the connection.
 */
function sendUntilClosed(port: number, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let received = "";
    const socket: Socket = connect(port, "127.0.0.1", () => socket.write(text));
    socket.on("data", (chunk: Buffer) => {
      received += chunk.toString();
    });
    socket.on("error", () => undefined);
    socket.once("close", () => {
      clearTimeout(deadline);
      resolve(received);
    });
    const deadline = setTimeout(() => {
      socket.destroy();
      reject(new Error(`the server kept the connection open: ${received}`));
    }, 10_000);
  });
}

/**
 * Writes two light commands to a bridge connected to `relay` at once on
 * one connection, the second with `Connection: close`, and asserts that
 * the bridge got as many commands as the client read responses. The
 * clustered relay closes each connection after its first response.
 */
async function assertPipelinedCommandsAnswered(
  relay: RelayProcess,
): Promise<void> {
  await withFakeBridge(relay, async (bridgeId, bridge) => {
    const commands = [true, false].map(async (on) => {
      const body = JSON.stringify({ on: { on } });
      return (await commandHeader(Buffer.byteLength(body), bridgeId)) + body;
    });
    const [first, second] = await Promise.all(commands);
    const received = await sendUntilClosed(
      relay.port,
      first! +
        second!.replace("Host: x\r\n", "Host: x\r\nConnection: close\r\n"),
    );
    // A response follows the body before it on the same line.
    const statuses = received.match(/HTTP\/1\.1 \d{3}/g) ?? [];
    assert.ok(statuses.length >= 1, received);
    for (const status of statuses) assert.equal(status, "HTTP/1.1 200");
    const commandCount = await commandsAfterPause(bridge);
    assert.equal(
      commandCount,
      statuses.length,
      `the bridge got ${commandCount} commands for ${statuses.length} responses`,
    );
  });
}

/** Defines the tests of bodies a relay answers before or without reading, shared by both relays. */
function itClosesUnwantedBodies(relayOf: () => RelayProcess): void {
  it("closes after an early response", async () => {
    await assertEarlyResponseCloses(relayOf());
  });

  it("answers an unknown path before its body", async () => {
    await assertUnknownPathClosed(relayOf());
  });

  it("answers 413 before an oversized body", async () => {
    await assertOversizedBodyRejected(relayOf());
  });

  it("cuts a chunked body past the limit", async () => {
    await assertChunkedBodyCut(relayOf());
  });

  it("runs only the pipelined commands it answers", async () => {
    await assertPipelinedCommandsAnswered(relayOf());
  });

  for (const framing of ["content-length", "chunked"] as const) {
    it(`responds 413 to a streamed ${framing} body`, async () => {
      await assertStreamedBodyGets413(relayOf(), framing);
    });

    it(`bounds the lingering close, ${framing}`, async () => {
      await assertLingerBounded(relayOf(), framing);
    });

    it(`runs no request pipelined after a 413, ${framing}`, async () => {
      await assertPipelinedAfter413Dropped(relayOf(), framing);
    });
  }
}

/** Opens an Engine.IO session over polling, joins it to `/app`, and returns its ID. */
async function openPollingSession(url: string): Promise<string> {
  const response = await fetch(`${url}/socket.io/?EIO=4&transport=polling`);
  const text = await response.text();
  const open = JSON.parse(text.slice(1)) as { sid: string };
  // Joins /app, or Socket.IO closes the session once its join timeout ends.
  const token = await appToken("stalled-user", [randomBridgeId()]);
  const joined = await fetch(
    `${url}/socket.io/?EIO=4&transport=polling&sid=${open.sid}`,
    {
      method: "POST",
      headers: { "Content-Type": "text/plain;charset=UTF-8" },
      body: `40/app,${JSON.stringify({ token })}`,
    },
  );
  assert.equal(await joined.text(), "ok");
  return open.sid;
}

describe("fault: clients stall their request", function () {
  this.timeout(60_000);
  let redis: RedisServer;
  let relay: RelayProcess;

  before(async () => {
    ({ redis, relay } = await startRelayOnRedis({
      workers: 1,
      // Express prints an error's stack outside the logs unless NODE_ENV is test.
      env: {
        REQUEST_BODY_TIMEOUT_MS: String(BODY_TIMEOUT_MS),
        MAX_PAYLOAD_BYTES: String(MAX_PAYLOAD_BYTES),
        LINGER_TIMEOUT_MS: String(LINGER_TIMEOUT_MS),
        NODE_ENV: "production",
      },
    }));
  });

  after(() => stopRelayOnRedis({ relay, redis }));

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

  it("answers 408 to a stalled body", async () => {
    const header = await commandHeader(100);
    const outcomes = await Promise.all(
      Array.from({ length: 3 }, () =>
        exchange(relay.port, [`${header}{"on":`]),
      ),
    );
    for (const { response, closedAfterMs } of outcomes) {
      assert.match(response, /^HTTP\/1\.1 408 /);
      assert.match(response, /"code":"TIMEOUT"/);
      assert.ok(
        closedAfterMs >= BODY_TIMEOUT_MS - 100,
        `closed after ${closedAfterMs} ms`,
      );
      assert.ok(
        closedAfterMs < BODY_TIMEOUT_MS * 1.25 + 1000,
        `closed only after ${closedAfterMs} ms`,
      );
    }
    console.log(
      `      fault figure: stalled bodies answered 408 and closed after ${outcomes.map((outcome) => outcome.closedAfterMs).join(", ")} ms (limit ${BODY_TIMEOUT_MS} ms without a byte)`,
    );
    const ready = await fetch(`${relay.url}/readyz`);
    assert.equal(ready.status, 200);
    assert.deepEqual(
      relay.output.filter((line) => /aborted/i.test(line)),
      [],
      "the aborted body reached Express's own error output",
    );
  });

  it("waits for a slow steady body", async () => {
    // Each part comes 0.6 of the limit after the last: the whole body
    // takes 1.8 times the limit, but no gap reaches it.
    const { response } = await exchange(
      relay.port,
      await commandInParts(4),
      BODY_TIMEOUT_MS * 0.6,
    );
    // The bridge is offline, which proves the body was read and parsed.
    assert.match(response, /^HTTP\/1\.1 409 /);
  });

  it("answers 408 to a stalled polling POST", async () => {
    const sid = await openPollingSession(relay.url);
    const workerPids = relay.workers().map((worker) => worker.pid);
    const { response } = await exchange(relay.port, [
      `POST /socket.io/?EIO=4&transport=polling&sid=${sid} HTTP/1.1\r\n` +
        "Host: x\r\nContent-Type: text/plain;charset=UTF-8\r\n" +
        "Content-Length: 10\r\n\r\n40",
    ]);
    assert.match(response, /^HTTP\/1\.1 408 /);
    // The relay closed the request, so Engine.IO dropped the session
    // rather than keep it for a body that will not come.
    const poll = await fetch(
      `${relay.url}/socket.io/?EIO=4&transport=polling&sid=${sid}`,
      { signal: AbortSignal.timeout(5000) },
    );
    assert.equal(poll.status, 400);
    assert.deepEqual(
      relay.workers().map((worker) => worker.pid),
      workerPids,
    );
  });

  it("waits for a polling POST past 30 s", async function () {
    this.timeout(60_000);
    const sid = await openPollingSession(relay.url);
    // A pong padded to 27 bytes, one byte every 0.6 of the limit: the body
    // takes 32 s in all, past Engine.IO's own total deadline of 30 s.
    const packet = "3".padEnd(27, " ");
    const header =
      `POST /socket.io/?EIO=4&transport=polling&sid=${sid} HTTP/1.1\r\n` +
      "Host: x\r\nContent-Type: text/plain;charset=UTF-8\r\n" +
      `Content-Length: ${packet.length}\r\n\r\n`;
    const chunks = [...packet];
    chunks[0] = header + chunks[0]!;
    const startedAt = Date.now();
    const { response } = await exchange(
      relay.port,
      chunks,
      BODY_TIMEOUT_MS * 0.6,
      50_000,
    );
    assert.ok(Date.now() - startedAt > 30_000);
    assert.match(response, /^HTTP\/1\.1 200 /);
    assert.match(response, /ok$/);
  });

  itClosesUnwantedBodies(() => relay);

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
        LINGER_TIMEOUT_MS + 5000,
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

describe("fault: a body still arriving at shutdown", function () {
  this.timeout(60_000);
  let redis: RedisServer;
  let relay: RelayProcess;

  before(async () => {
    ({ redis, relay } = await startRelayOnRedis({ workers: 1 }));
  });

  after(() => stopRelayOnRedis({ relay, redis }));

  it("answers it before the worker exits", async () => {
    // The primary forwards such a body chunk by chunk. Parts come 300 ms
    // apart, and SIGTERM comes between the first two.
    const answered = exchange(relay.port, await commandInParts(5), 300);
    await sleep(150);
    const exited = relay.stop("SIGTERM");
    const { response } = await answered;
    assert.match(response, /^HTTP\/1\.1 409 /);
    assert.equal(await exited, 0);
  });
});

describe("fault: a stalled body on the embedded relay", function () {
  this.timeout(30_000);
  let relay: RelayProcess;

  before(async () => {
    relay = await startRelay({
      env: {
        REQUEST_BODY_TIMEOUT_MS: String(BODY_TIMEOUT_MS),
        MAX_PAYLOAD_BYTES: String(MAX_PAYLOAD_BYTES),
        LINGER_TIMEOUT_MS: String(LINGER_TIMEOUT_MS),
      },
    });
  });

  after(async () => {
    await relay?.stop();
  });

  it("answers 408 with the error body", async () => {
    const header = await commandHeader(100);
    const { response, closedAfterMs } = await exchange(relay.port, [
      `${header}{"on":`,
    ]);
    // Node's own request timeout would send a bare 408, and only after
    // 300 s.
    assert.match(response, /^HTTP\/1\.1 408 /);
    assert.match(response, /"code":"TIMEOUT"/);
    assert.ok(
      closedAfterMs < BODY_TIMEOUT_MS * 1.25 + 1000,
      `closed after ${closedAfterMs} ms`,
    );
  });

  itClosesUnwantedBodies(() => relay);

  it("closes an unknown path's oversized body", async () => {
    const { response, closedAfterMs } = await exchange(relay.port, [
      "POST /nothing HTTP/1.1\r\nHost: x\r\n" +
        `Content-Length: ${MAX_PAYLOAD_BYTES + 1}\r\n\r\nab`,
    ]);
    assert.match(response, /^HTTP\/1\.1 404 /);
    assert.match(response, /\r\nconnection: close\r\n/i);
    assert.ok(
      closedAfterMs < PROMPT_CLOSE_MS,
      `closed after ${closedAfterMs} ms`,
    );
  });

  it("serves no request after a 413", async () => {
    const header = await commandHeader(MAX_PAYLOAD_BYTES + 1);
    const socket = await halfOpenAfter(relay.port, header);
    // The relay has responded and ended its side: the rest of the body
    // and a pipelined request arrive while it lingers.
    const closed = once(socket, "close");
    socket.end(
      " ".repeat(MAX_PAYLOAD_BYTES + 1) +
        "GET /pipelined-after-413 HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    await closed;
    // The relay logs every request it serves, a 404 among them.
    await sleep(500);
    const served = relay.logs.filter((line) =>
      JSON.stringify(line).includes("/pipelined-after-413"),
    );
    assert.deepEqual(served, []);
  });

  it("keeps a connection after an unread whole body", async () => {
    const response = await keepAliveExchange(
      relay.port,
      "POST /nothing HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
      "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    );
    assert.match(response, /^HTTP\/1\.1 200 /);
  });
});

describe("fault: a pipelined request at shutdown", function () {
  this.timeout(60_000);
  const shutdownTimeoutMs = 6000;
  let redis: RedisServer;
  let relay: RelayProcess;

  before(async () => {
    ({ redis, relay } = await startRelayOnRedis({
      workers: 1,
      env: { SHUTDOWN_TIMEOUT_MS: String(shutdownTimeoutMs) },
    }));
  });

  after(() => stopRelayOnRedis({ relay, redis }));

  it("stops the worker before its deadline", async () => {
    // A request with a body and one pipelined behind it, in one write.
    // The worker responds to the first, closes the connection and never
    // serves the second, for which the drain used to wait until
    // SHUTDOWN_TIMEOUT_MS.
    const received = await sendUntilClosed(
      relay.port,
      `PUT /api/v1/bridges/${randomBridgeId()}/lights/a HTTP/1.1\r\n` +
        "Host: relay\r\nContent-Type: application/json\r\n" +
        "Content-Length: 2\r\n\r\n{}" +
        "GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n",
    );
    assert.match(received, /^HTTP\/1\.1 401 /);

    assert.equal(await relay.stop("SIGTERM"), 0);
    const stopped = relay.logs.find(
      (line) => line.role === "worker" && line.msg === "stopped",
    );
    assert.ok(
      Number(stopped?.durationMs) < shutdownTimeoutMs / 2,
      `worker stopped after ${String(stopped?.durationMs)} ms`,
    );
  });
});
