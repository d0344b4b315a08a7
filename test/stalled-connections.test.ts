import assert from "node:assert/strict";
import { createServer, request, type Server } from "node:http";
import { connect, type AddressInfo, type Socket } from "node:net";
import { closeStalledConnections } from "../server/cluster/stalled-connections.ts";
import { ForwardedConnection } from "./support/forwarded-connection.ts";

/**
 * Serves one request on a new server, with or without the stalled
 * connection limits, and resolves with the number of 'close'
 * listeners on its connection once the request arrived.
 */
async function closeListenersAfterRequest(limited: boolean): Promise<number> {
  const server: Server = createServer();
  if (limited) {
    closeStalledConnections(server, {
      headersTimeoutMs: 10_000,
      bodyTimeoutMs: 10_000,
    });
  }
  let listeners = -1;
  server.on("request", (incoming, response) => {
    listeners = (incoming.socket as Socket).listenerCount("close");
    response.end("ok");
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve, reject) => {
    request({ host: "127.0.0.1", port, agent: false }, (response) => {
      response.resume();
      response.once("end", resolve);
    })
      .once("error", reject)
      .end();
  });
  await new Promise((resolve) => server.close(resolve));
  return listeners;
}

describe("stalled connection limits", () => {
  it("removes its close listener after a request", async () => {
    // A websocket keeps its connection for days: a listener left on each
    // one is memory held per bridge.
    assert.equal(
      await closeListenersAfterRequest(true),
      await closeListenersAfterRequest(false),
    );
  });
});

/** Resolves once `check` returns true, polling every 10 ms for up to 5 s. */
async function waitFor(check: () => boolean): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("condition not met within 5 s");
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe("stalled request bodies on a server's own sockets", () => {
  const IDLE_MS = 400;
  let server: Server;
  let port: number;

  before(async () => {
    server = createServer((incoming, response) => {
      if (incoming.url === "/held") {
        // Responds late without reading, as Engine.IO does with a long poll.
        setTimeout(() => response.end("held"), IDLE_MS * 2);
        return;
      }
      if (incoming.url === "/early") {
        // Responds without reading the body, as a rejected token does.
        response.writeHead(401).end();
        return;
      }
      const chunks: Buffer[] = [];
      incoming.on("data", (chunk: Buffer) => chunks.push(chunk));
      incoming.on("end", () =>
        response.end(`read ${Buffer.concat(chunks).length}`),
      );
    });
    closeStalledConnections(server, {
      headersTimeoutMs: 10_000,
      bodyTimeoutMs: IDLE_MS,
    });
    await new Promise<void>((resolve) =>
      server.listen(0, "127.0.0.1", resolve),
    );
    port = (server.address() as AddressInfo).port;
  });

  after(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });

  /** Sends `parts` of a 40-byte body `gapMs` apart; resolves with the reply and the ms until the close. */
  const send = (
    path: string,
    parts: string[],
    gapMs: number,
  ): Promise<{ reply: string; closedAfterMs: number }> =>
    new Promise((resolve) => {
      const startedAt = Date.now();
      let reply = "";
      const socket = connect(port, "127.0.0.1");
      socket.write(
        `POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n`,
      );
      const timers = parts.map((part, index) =>
        setTimeout(() => socket.write(part), index * gapMs),
      );
      socket.on("data", (chunk: Buffer) => {
        reply += chunk.toString();
        if (reply.includes("read 40")) socket.destroy();
      });
      socket.on("error", () => undefined);
      socket.on("close", () => {
        for (const timer of timers) clearTimeout(timer);
        resolve({ reply, closedAfterMs: Date.now() - startedAt });
      });
    });

  /**
   * Sends a GET of the late route with `headers` and `body`, and resolves
   * with what the server sent until its "held" body or the close.
   */
  const requestHeld = (headers = "", body = ""): Promise<string> =>
    new Promise((resolve, reject) => {
      let received = "";
      const socket = connect(port, "127.0.0.1");
      socket.write(`GET /held HTTP/1.1\r\nHost: x\r\n${headers}\r\n${body}`);
      socket.on("data", (chunk: Buffer) => {
        received += chunk.toString();
        if (received.endsWith("held")) {
          socket.destroy();
          resolve(received);
        }
      });
      socket.on("error", reject);
      socket.on("close", () => resolve(received));
    });

  it("answers 408 to a stalled body", async () => {
    const { reply, closedAfterMs } = await send("/", ["x".repeat(10)], 0);
    assert.match(reply, /^HTTP\/1\.1 408 /);
    assert.match(reply, /"code":"TIMEOUT"/);
    assert.match(reply, /Connection: close/i);
    assert.ok(closedAfterMs >= IDLE_MS, `closed after ${closedAfterMs} ms`);
    assert.ok(closedAfterMs < IDLE_MS * 2, `closed after ${closedAfterMs} ms`);
  });

  it("waits for a slow steady body", async () => {
    const { reply } = await send(
      "/",
      Array.from({ length: 4 }, () => "x".repeat(10)),
      IDLE_MS * 0.6,
    );
    assert.match(reply, /^HTTP\/1\.1 200 /);
    assert.match(reply, /read 40$/);
  });

  it("leaves requests without a body alone", async () => {
    const reply = await requestHeld();
    assert.match(reply, /^HTTP\/1\.1 200 /);
    assert.doesNotMatch(reply, /408/);
  });

  it("leaves a complete unread body alone", async () => {
    const reply = await requestHeld("Content-Length: 2\r\n", "{}");
    assert.match(reply, /^HTTP\/1\.1 200 /);
    assert.doesNotMatch(reply, /408/);
  });

  it("counts a forwarded connection's bytes once", async () => {
    const connection = new ForwardedConnection();
    server.emit("connection", connection);
    const requests = 15;
    const body = "x".repeat(40);
    connection.push(
      `POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n${body}`.repeat(
        requests,
      ),
    );
    await waitFor(() => connection.written.split("read 40").length > requests);
    // Pipelined requests share the connection, and a counter per request
    // would add a listener each, past Node's warning limit of 10.
    assert.ok(
      connection.listenerCount("data") <= 2,
      `${connection.listenerCount("data")} data listeners`,
    );
    connection.destroy();
  });

  it("closes after an early response", async () => {
    const { reply, closedAfterMs } = await send("/early", ["x".repeat(10)], 0);
    assert.match(reply, /^HTTP\/1\.1 401 /);
    assert.doesNotMatch(reply, /408/);
    assert.ok(closedAfterMs >= IDLE_MS, `closed after ${closedAfterMs} ms`);
    assert.ok(closedAfterMs < IDLE_MS * 2, `closed after ${closedAfterMs} ms`);
  });
});
