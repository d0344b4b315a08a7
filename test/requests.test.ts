import assert from "node:assert/strict";
import { createServer, type Server as HttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import { Server, type Socket as ServerSocket } from "socket.io";
import { io, type Socket } from "socket.io-client";
import { RelayError } from "../server/errors.ts";
import { requestsInFlightRejected } from "../server/metrics/relay-metrics.ts";
import { IN_FLIGHT_RETRY_AFTER_MS } from "../server/transport/requests-in-flight.ts";
import {
  requestListeners,
  serveRequests,
} from "../server/transport/requests.ts";
import { capturingLogger } from "./support/capturing-logger.ts";

/** Reads the count of requests rejected for the backlog on the default namespace. */
async function rejectedInFlight(): Promise<number> {
  const { values } = await requestsInFlightRejected.get();
  return values.find((value) => value.labels.namespace === "/")?.value ?? 0;
}

describe("request handling", () => {
  let httpServer: HttpServer;
  let server: Server;
  let client: Socket;
  let url: string;
  const serverSockets: ServerSocket[] = [];
  const { logger, lines } = capturingLogger();
  // Requests to `hold` wait until the test opens the gate.
  let gate: Promise<void> = Promise.resolve();
  let openGate: () => void = () => undefined;
  const closeGate = (): void => {
    gate = new Promise((resolve) => {
      openGate = resolve;
    });
  };

  before(async () => {
    httpServer = createServer();
    server = new Server(httpServer);
    const requests = requestListeners(
      {
        boom: async () => {
          throw new TypeError(
            "cannot read properties of undefined (secret detail)",
          );
        },
        refuse: async () => {
          throw new RelayError("NOT_FOUND", 'light "x" not found');
        },
        echo: async (payload) => ({ payload }),
        whoami: async (_payload, socket) => ({ socketId: socket.id }),
        hold: async () => {
          await gate;
          return { pending: true };
        },
      },
      {
        maxPayloadBytes: 1000,
        maxEventsPerWindow: 1000,
        inFlight: { requests: 3, bytes: 600 },
        logger,
      },
    );
    server.on("connection", (socket) => {
      serveRequests(socket, requests);
      serverSockets.push(socket);
    });
    await new Promise<void>((resolve) =>
      httpServer.listen(0, "127.0.0.1", resolve),
    );
    const { port } = httpServer.address() as AddressInfo;
    url = `http://127.0.0.1:${port}`;
    client = io(url, { transports: ["websocket"] });
    await new Promise<void>((resolve) =>
      client.once("connect", () => resolve()),
    );
  });

  after(async () => {
    client.close();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it("answers INTERNAL for a throwing handler", async () => {
    const ack = await client.timeout(2000).emitWithAck("boom", {});
    assert.deepEqual(ack, {
      ok: false,
      error: { code: "INTERNAL", message: "internal error" },
    });
    const logged = lines.find((line) => line.msg === "request handler failed");
    assert.ok(logged, "the failure is logged");
    assert.match(
      JSON.stringify(logged.err),
      /secret detail/,
      "the log keeps the details",
    );
  });

  it("keeps serving after a handler throws", async () => {
    await client.timeout(2000).emitWithAck("boom", {});
    const ack = await client.timeout(2000).emitWithAck("echo", { n: 1 });
    assert.deepEqual(ack, { ok: true, data: { payload: { n: 1 } } });
  });

  it("passes a RelayError on as is", async () => {
    const ack = await client.timeout(2000).emitWithAck("refuse", {});
    assert.deepEqual(ack, {
      ok: false,
      error: { code: "NOT_FOUND", message: 'light "x" not found' },
    });
  });

  it("answers PAYLOAD_TOO_LARGE over the limit", async () => {
    const ack = await client
      .timeout(2000)
      .emitWithAck("echo", { padding: "x".repeat(1000) });
    assert.equal(ack.ok, false);
    assert.equal(ack.error.code, "PAYLOAD_TOO_LARGE");
    assert.match(ack.error.message, /1000 bytes/);
  });

  it("accepts the callback as only argument", async () => {
    const ack = await client.timeout(2000).emitWithAck("echo");
    assert.deepEqual(ack, { ok: true, data: {} });
  });

  it("ignores and logs a request without callback", async () => {
    const before = lines.length;
    client.emit("boom", {});
    const ack = await client.timeout(2000).emitWithAck("echo", { n: 2 });
    assert.equal(ack.ok, true);
    const ignored = lines
      .slice(before)
      .filter(
        (line) =>
          line.msg === "ignored a request without an acknowledgement callback",
      );
    assert.equal(ignored.length, 1);
    assert.equal(ignored[0]?.level, 20, "logged at debug level");
  });

  it("answers INVALID_PAYLOAD for an unknown event", async () => {
    // Socket.IO's parser also admits numbers as event names.
    const events: unknown[] = ["light:fly", "constructor", "__proto__", 42];
    for (const event of events) {
      const ack = await client.timeout(2000).emitWithAck(event as string, {});
      assert.equal(ack.ok, false, String(event));
      assert.equal(ack.error.code, "INVALID_PAYLOAD", String(event));
      assert.match(ack.error.message, /unknown event/, String(event));
    }
  });

  it("logs an unknown event without callback", async () => {
    const before = lines.length;
    client.emit("light:fly", {});
    await client.timeout(2000).emitWithAck("echo", { n: 3 });
    const ignored = lines
      .slice(before)
      .filter(
        (line) =>
          line.msg ===
          "ignored an unknown event without an acknowledgement callback",
      );
    assert.equal(ignored.length, 1);
    assert.equal(ignored[0]?.event, '"light:fly"');
  });

  it("passes each handler its own socket", async () => {
    const second = io(url, { transports: ["websocket"] });
    await new Promise<void>((resolve) =>
      second.once("connect", () => resolve()),
    );
    try {
      const [first, other] = await Promise.all([
        client.timeout(2000).emitWithAck("whoami", {}),
        second.timeout(2000).emitWithAck("whoami", {}),
      ]);
      assert.deepEqual(first, { ok: true, data: { socketId: client.id } });
      assert.deepEqual(other, { ok: true, data: { socketId: second.id } });
    } finally {
      second.close();
    }
  });

  it("rejects requests past the in-flight count", async () => {
    closeGate();
    const rejectedBefore = await rejectedInFlight();
    const pending = [1, 2, 3].map(() =>
      client.timeout(2000).emitWithAck("hold", {}),
    );
    const rejected = await client.timeout(2000).emitWithAck("echo", { n: 3 });
    assert.equal(rejected.ok, false);
    assert.equal(rejected.error.code, "RATE_LIMITED");
    assert.equal(rejected.error.retryAfterMs, IN_FLIGHT_RETRY_AFTER_MS);
    assert.match(rejected.error.message, /max 3 requests/);
    assert.equal(await rejectedInFlight(), rejectedBefore + 1);
    const second = io(url, { transports: ["websocket"] });
    try {
      const other = await second.timeout(2000).emitWithAck("echo", { n: 4 });
      assert.deepEqual(other, { ok: true, data: { payload: { n: 4 } } });
    } finally {
      second.close();
    }
    openGate();
    for (const answer of await Promise.all(pending)) {
      assert.deepEqual(answer, { ok: true, data: { pending: true } });
    }
    const served = await client.timeout(2000).emitWithAck("echo", { n: 5 });
    assert.deepEqual(served, { ok: true, data: { payload: { n: 5 } } });
  });

  it("rejects payload bytes past the in-flight limit", async () => {
    closeGate();
    const large = client
      .timeout(2000)
      .emitWithAck("hold", { padding: "x".repeat(700) });
    const rejected = await client.timeout(2000).emitWithAck("echo", {});
    assert.equal(rejected.error?.code, "RATE_LIMITED");
    assert.match(rejected.error.message, /600 bytes/);
    openGate();
    assert.deepEqual(await large, { ok: true, data: { pending: true } });
    closeGate();
    const halves = [1, 2].map(() =>
      client.timeout(2000).emitWithAck("hold", { padding: "x".repeat(250) }),
    );
    // 2 × 264 bytes wait; 114 more would pass 600.
    const third = await client
      .timeout(2000)
      .emitWithAck("echo", { padding: "x".repeat(100) });
    assert.equal(third.error?.code, "RATE_LIMITED");
    openGate();
    for (const answer of await Promise.all(halves))
      assert.equal(answer.ok, true);
  });

  it("shares its listeners among sockets", () => {
    assert.ok(serverSockets.length >= 2, "two sockets connected");
    const [first, second] = serverSockets;
    assert.ok(first !== undefined);
    assert.ok(second !== undefined);
    assert.equal(first.listeners("echo").length, 1);
    assert.equal(first.listeners("echo")[0], second.listeners("echo")[0]);
    assert.equal(first.listenersAny().length, 1);
    assert.equal(first.listenersAny()[0], second.listenersAny()[0]);
  });
});
