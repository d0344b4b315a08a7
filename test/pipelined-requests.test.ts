import assert from "node:assert/strict";
import { once } from "node:events";
import {
  createServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from "node:http";
import { connect, type AddressInfo, type Socket } from "node:net";
import { closeLingering } from "../server/http/lingering-close.ts";
import { serveRequestsInTurn } from "../server/http/pipelined-requests.ts";

type Handler = (request: IncomingMessage, response: ServerResponse) => void;

/** Starts a loopback server whose requests go through `serveRequestsInTurn` to `handler`. */
async function startServer(handler: Handler): Promise<Server> {
  const server = createServer(handler);
  serveRequestsInTurn(server);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return server;
}

/**
 * Writes `text` at once on a new connection, and resolves with all the
 * server sent once the server has closed the connection.
 */
function sendPipelined(server: Server, text: string): Promise<string> {
  const { port } = server.address() as AddressInfo;
  return new Promise((resolve) => {
    let received = "";
    const socket: Socket = connect(port, "127.0.0.1", () => socket.write(text));
    socket.on("data", (chunk: Buffer) => {
      received += chunk.toString();
    });
    // A server that destroys the connection with unread bytes resets it.
    socket.on("error", () => undefined);
    socket.once("close", () => resolve(received));
  });
}

/**
 * Writes `first`, then `part` every 10 ms, on a connection that keeps its
 * own half open, so that only the server's destroy closes it. Resolves
 * with all the server sent and the ms from the connection until the
 * server destroyed its side.
 */
async function streamHalfOpen(
  server: Server,
  first: string,
  part: string,
): Promise<{ received: string; closedAfterMs: number }> {
  const { port } = server.address() as AddressInfo;
  const serverClosed = new Promise<number>((resolve) => {
    server.once("connection", (connection: Socket) => {
      const connectedAt = Date.now();
      connection.once("close", () => resolve(Date.now() - connectedAt));
    });
  });
  let received = "";
  const socket = connect({ port, host: "127.0.0.1", allowHalfOpen: true });
  socket.once("connect", () => socket.write(first));
  const writer = setInterval(() => {
    if (socket.writable) socket.write(part);
  }, 10);
  socket.on("data", (chunk: Buffer) => {
    received += chunk.toString();
  });
  socket.on("error", () => undefined);
  const closedAfterMs = await serverClosed;
  clearInterval(writer);
  socket.destroy();
  return { received, closedAfterMs };
}

function get(path: string, headers = ""): string {
  return `GET ${path} HTTP/1.1\r\nHost: x\r\n${headers}\r\n`;
}

describe("pipelined requests", () => {
  let server: Server | undefined;

  afterEach(() => {
    server?.closeAllConnections();
    server?.close();
    server = undefined;
  });

  it("serves them one at a time", async () => {
    const events: string[] = [];
    server = await startServer((request, response) => {
      events.push(`start ${request.url}`);
      // Before the listener that starts the next request.
      response.prependOnceListener("finish", () =>
        events.push(`finish ${request.url}`),
      );
      const delayMs = request.url === "/slow" ? 100 : 0;
      setTimeout(() => response.end("ok"), delayMs);
    });

    const received = await sendPipelined(
      server,
      get("/slow") + get("/fast", "Connection: close\r\n"),
    );

    assert.equal(received.match(/HTTP\/1\.1 200/g)?.length, 2, received);
    assert.deepEqual(events, [
      "start /slow",
      "finish /slow",
      "start /fast",
      "finish /fast",
    ]);
  });

  it("runs none after a closing response", async () => {
    const served: string[] = [];
    server = await startServer((request, response) => {
      served.push(request.url ?? "");
      if (request.url === "/first") response.setHeader("Connection", "close");
      response.end("ok");
    });

    const received = await sendPipelined(
      server,
      get("/first") + get("/second") + get("/third"),
    );

    assert.equal(received.match(/HTTP\/1\.1 200/g)?.length, 1, received);
    assert.deepEqual(served, ["/first"]);
  });

  it("counts dropped requests toward the linger bytes", async () => {
    const linger = { timeoutMs: 5000, maxBytes: 10_000 };
    const served: string[] = [];
    server = await startServer((request, response) => {
      served.push(request.url ?? "");
      closeLingering(request, response, linger);
      response.statusCode = 413;
      response.end("too large");
    });
    const dropped =
      "POST /dropped HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n";

    // The first request has no body, so only the body of the dropped
    // request, which arrives after the linger started, counts.
    const { received, closedAfterMs } = await streamHalfOpen(
      server,
      get("/first") + dropped,
      "x".repeat(2000),
    );

    assert.match(received, /^HTTP\/1\.1 413 /);
    assert.equal(received.match(/HTTP\/1\.1 /g)?.length, 1, received);
    assert.deepEqual(served, ["/first"]);
    assert.ok(
      closedAfterMs < linger.timeoutMs / 2,
      `closed after ${closedAfterMs} ms`,
    );
  });
});
