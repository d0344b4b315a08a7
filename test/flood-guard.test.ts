import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, type Server as HttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import { pino } from "pino";
import { Server, type Socket as ServerSocket } from "socket.io";
import { io, type Socket } from "socket.io-client";
import {
  FLOOD_WINDOW_MS,
  FloodGuard,
} from "../server/transport/flood-guard.ts";
import {
  requestListeners,
  serveRequests,
} from "../server/transport/requests.ts";

const MAX_EVENTS = 20;

describe("flood guard on real sockets", () => {
  let httpServer: HttpServer;
  let server: Server;
  let url: string;
  const clients: Socket[] = [];

  before(async () => {
    httpServer = createServer();
    server = new Server(httpServer);
    const requests = requestListeners(
      { echo: async (payload) => payload },
      {
        maxPayloadBytes: 1000,
        maxEventsPerWindow: MAX_EVENTS,
        inFlight: { requests: Infinity, bytes: Infinity },
        logger: pino({ level: "silent" }),
      },
    );
    server.on("connection", (socket: ServerSocket) =>
      serveRequests(socket, requests),
    );
    httpServer.listen(0, "127.0.0.1");
    await once(httpServer, "listening");
    url = `http://127.0.0.1:${(httpServer.address() as AddressInfo).port}`;
  });

  after(async () => {
    for (const client of clients) client.close();
    await server.close();
  });

  /** Resolves with the reason of `client`'s next disconnect. */
  const disconnected = (client: Socket): Promise<string> =>
    new Promise((resolve) => client.once("disconnect", resolve));

  async function connectClient(): Promise<Socket> {
    const client = io(url, { transports: ["websocket"], reconnection: false });
    clients.push(client);
    await new Promise((resolve) => client.once("connect", () => resolve(0)));
    return client;
  }

  /** Sends `count` events named `event` and returns how many were acknowledged. */
  async function send(
    client: Socket,
    event: string,
    count: number,
  ): Promise<number> {
    let answered = 0;
    const acks = Array.from(
      { length: count },
      () =>
        new Promise<void>((resolve) => {
          client.timeout(1000).emit(event, {}, (error: Error | null) => {
            if (error === null) answered += 1;
            resolve();
          });
        }),
    );
    await Promise.all(acks);
    return answered;
  }

  it("serves a connection at the limit", async () => {
    const client = await connectClient();

    assert.equal(await send(client, "echo", MAX_EVENTS), MAX_EVENTS);
    assert.equal(client.connected, true);
  });

  it("closes a connection over the limit", async () => {
    const client = await connectClient();
    const closed = disconnected(client);

    const answered = await send(client, "echo", MAX_EVENTS * 2);

    assert.equal(await closed, "io server disconnect");
    // Acknowledgements still pending when the connection closes are lost.
    assert.ok(answered <= MAX_EVENTS, `${answered} answered`);
  });

  it("counts unknown events too", async () => {
    const client = await connectClient();
    const closed = disconnected(client);

    await send(client, "no-such-event", MAX_EVENTS + 1);

    assert.equal(await closed, "io server disconnect");
  });

  it("counts each connection apart", async () => {
    const flooding = await connectClient();
    const quiet = await connectClient();
    await send(flooding, "echo", MAX_EVENTS + 1);

    assert.equal(await send(quiet, "echo", 1), 1);
    assert.equal(quiet.connected, true);
  });
});

describe("FloodGuard windows", () => {
  it("starts a new count each window", () => {
    let now = 0;
    const disconnected: boolean[] = [];
    const socket = {
      id: "s1",
      nsp: { name: "/app" },
      data: {},
      handshake: { address: "127.0.0.1" },
      disconnect: () => disconnected.push(true),
    } as unknown as ServerSocket;
    const guard = new FloodGuard(2, pino({ level: "silent" }), () => now);

    assert.equal(guard.admit(socket), true);
    assert.equal(guard.admit(socket), true);
    now = FLOOD_WINDOW_MS;
    assert.equal(guard.admit(socket), true, "a new window");
    assert.equal(guard.admit(socket), true);
    assert.equal(guard.admit(socket), false);
    assert.equal(guard.admit(socket), false);
    assert.deepEqual(disconnected, [true], "disconnected once");
  });
});
