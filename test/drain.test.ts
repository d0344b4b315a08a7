import assert from "node:assert/strict";
import { createServer, type Server as HttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import { pino } from "pino";
import { Server, type Socket as ServerSocket } from "socket.io";
import { io, type Socket } from "socket.io-client";
import { ConnectionDrain } from "../server/relay/drain.ts";
import {
  requestListeners,
  serveRequests,
} from "../server/transport/requests.ts";

describe("connection drain with shared request listeners", () => {
  let httpServer: HttpServer;
  let server: Server;
  let client: Socket;
  let admitted: ServerSocket;
  let finishSlow: () => void = () => undefined;
  const drain = new ConnectionDrain({ windowMs: 0, forceAfterMs: 5000 });

  before(async () => {
    httpServer = createServer();
    server = new Server(httpServer);
    const requests = requestListeners(
      {
        slow: () =>
          new Promise((resolve) => {
            finishSlow = () => resolve({ finished: true });
          }),
        echo: async (payload) => payload,
      },
      {
        maxPayloadBytes: 1000,
        maxEventsPerWindow: 1000,
        inFlight: { requests: 1000, bytes: 1_000_000 },
        logger: pino({ level: "silent" }),
      },
    );
    drain.watchNamespace(server.of("/"));
    const connected = new Promise<ServerSocket>((resolve) => {
      server.on("connection", (socket) => {
        serveRequests(socket, requests);
        resolve(socket);
      });
    });
    await new Promise<void>((resolve) =>
      httpServer.listen(0, "127.0.0.1", resolve),
    );
    const { port } = httpServer.address() as AddressInfo;
    client = io(`http://127.0.0.1:${port}`, {
      transports: ["websocket"],
      reconnection: false,
    });
    admitted = await connected;
  });

  after(async () => {
    client.close();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it("waits for a request, rejects new ones", async () => {
    const slow = client.timeout(5000).emitWithAck("slow", {});
    // The slow request reaches its handler before the drain starts.
    await client.timeout(2000).emitWithAck("echo", { n: 1 });
    const drained = drain.run([admitted]);

    const refused = await client.timeout(2000).emitWithAck("echo", { n: 2 });
    assert.equal(refused.ok, false);
    assert.equal(refused.error.code, "UNAVAILABLE");
    assert.equal(client.connected, true, "closed with a request in flight");

    const disconnected = new Promise((resolve) =>
      client.once("disconnect", resolve),
    );
    finishSlow();
    assert.deepEqual(await slow, { ok: true, data: { finished: true } });
    const summary = await drained;
    assert.equal(summary.waited, 1);
    assert.equal(summary.forced, 0);
    assert.equal(await disconnected, "transport close");
  });
});

describe("connection drain per socket", () => {
  it("shares one disconnect listener between all sockets", async () => {
    const httpServer = createServer();
    const server = new Server(httpServer);
    new ConnectionDrain({ windowMs: 0, forceAfterMs: 5000 }).watchNamespace(
      server.of("/"),
    );
    const sockets: ServerSocket[] = [];
    const bothConnected = new Promise<void>((resolve) => {
      server.on("connection", (socket) => {
        sockets.push(socket);
        if (sockets.length === 2) resolve();
      });
    });
    await new Promise<void>((resolve) =>
      httpServer.listen(0, "127.0.0.1", resolve),
    );
    const { port } = httpServer.address() as AddressInfo;
    const clients = [1, 2].map(() =>
      io(`http://127.0.0.1:${port}`, {
        transports: ["websocket"],
        reconnection: false,
      }),
    );
    try {
      await bothConnected;
      // A closure per socket would be held for the life of each bridge.
      const [first, second] = sockets.map((socket) =>
        socket.listeners("disconnect"),
      );
      assert.equal(first!.length, 1);
      assert.deepEqual(first, second);
    } finally {
      for (const client of clients) client.close();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});
