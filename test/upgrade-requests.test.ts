import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, type IncomingMessage, type Server } from "node:http";
import { connect as netConnect, type AddressInfo } from "node:net";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { Server as SocketServer } from "socket.io";
import { io as connectClient, type Socket } from "socket.io-client";
import { pino } from "pino";
import { loadConfig } from "../server/config.ts";
import { LocalBus } from "../server/messaging/server-bus.ts";
import { createRelay, type Relay } from "../server/relay/create-relay.ts";
import { MemoryStore } from "../server/state/memory-store.ts";
import { releaseUpgradeRequests } from "../server/transport/upgrade-requests.ts";
import { connectBridge, randomBridgeId } from "./support/clients.ts";
import { TEST_SECRET } from "./support/relay-process.ts";

setFlagsFromString("--expose-gc");
const collectGarbage = runInNewContext("gc") as () => void;

interface Served {
  http: Server;
  io: SocketServer;
  url: string;
  /** The upgrade request of each connection, held weakly. */
  requests: WeakRef<IncomingMessage>[];
}

/** Starts a Socket.IO server that drops each connection's request, as the relay does. */
async function serve(release: boolean): Promise<Served> {
  const http = createServer();
  const io = new SocketServer(http, { transports: ["websocket"] });
  if (release) releaseUpgradeRequests(http);
  const requests: WeakRef<IncomingMessage>[] = [];
  io.engine.on("connection", (connection: { request?: IncomingMessage }) => {
    if (connection.request) requests.push(new WeakRef(connection.request));
    connection.request = undefined;
  });
  io.on("connection", (socket) => {
    socket.on("echo", (value: unknown, ack: (value: unknown) => void) =>
      ack(value),
    );
  });
  http.listen(0, "127.0.0.1");
  await once(http, "listening");
  const { port } = http.address() as AddressInfo;
  return { http, io, url: `http://127.0.0.1:${port}`, requests };
}

async function connected(url: string): Promise<Socket> {
  const socket = connectClient(url, {
    transports: ["websocket"],
    forceNew: true,
  });
  await new Promise((resolve) => socket.once("connect", () => resolve(null)));
  return socket;
}

/** Collects garbage after the current job, so that WeakRefs can clear. */
async function collected(): Promise<void> {
  await new Promise((resolve) => setImmediate(resolve));
  collectGarbage();
}

describe("upgrade requests", function () {
  let served: Served | undefined;
  const clients: Socket[] = [];

  afterEach(async () => {
    for (const client of clients.splice(0)) client.close();
    served?.io.close();
    served = undefined;
  });

  it("releases each upgrade request", async () => {
    served = await serve(true);
    for (let index = 0; index < 3; index += 1) {
      clients.push(await connected(served.url));
    }
    await collected();
    assert.equal(served.requests.length, 3);
    assert.deepEqual(
      served.requests.map((request) => request.deref()),
      [undefined, undefined, undefined],
    );
  });

  it("keeps it without the release", async () => {
    served = await serve(false);
    clients.push(await connected(served.url));
    await collected();
    assert.notEqual(served.requests[0]?.deref(), undefined);
  });

  it("keeps the connection and its close working", async () => {
    served = await serve(true);
    const client = await connected(served.url);
    clients.push(client);
    assert.equal(await client.timeout(2000).emitWithAck("echo", 42), 42);
    const [serverSocket] = await served.io.fetchSockets();
    assert.ok(serverSocket);
    const disconnected = new Promise<string>((resolve) => {
      served?.io.sockets.sockets
        .get(serverSocket.id)
        ?.once("disconnect", (reason: string) => resolve(reason));
    });
    // Destroying the client's TCP socket, with no websocket close frame,
    // leaves the server only its socket's close event to notice.
    const { transport } = client.io.engine as unknown as {
      transport: { ws: { _socket: { destroy(): void } } };
    };
    transport.ws._socket.destroy();
    assert.equal(await disconnected, "transport close");
  });
});

describe("upgrade requests in the relay", function () {
  let relay: Relay;
  let store: MemoryStore;
  let url: string;
  const requests: WeakRef<IncomingMessage>[] = [];
  const clients: Socket[] = [];

  before(async () => {
    store = new MemoryStore();
    relay = await createRelay({
      config: loadConfig({ DRAIN_WINDOW_MS: "0" }),
      logger: pino({ level: "silent" }),
      store,
      bus: new LocalBus("upgrade-test"),
      secret: TEST_SECRET,
    });
    relay.httpServer.on("upgrade", (request: IncomingMessage) => {
      requests.push(new WeakRef(request));
    });
    relay.httpServer.listen(0, "127.0.0.1");
    await once(relay.httpServer, "listening");
    const { port } = relay.httpServer.address() as AddressInfo;
    url = `http://127.0.0.1:${port}`;
  });

  after(async () => {
    for (const client of clients.splice(0)) client.close();
    await relay.close();
    store.close();
  });

  it("keeps no bridge's upgrade request", async () => {
    for (let index = 0; index < 3; index += 1) {
      clients.push(await connectBridge(url, randomBridgeId()));
    }
    await collected();
    assert.equal(requests.length, 3);
    assert.deepEqual(
      requests.map((request) => request.deref()),
      [undefined, undefined, undefined],
    );
  });

  /** Sends `request` over a new TCP connection and resolves with all it received once the relay closes it. */
  async function exchange(request: string): Promise<string> {
    const { port } = new URL(url);
    const socket = netConnect(Number(port), "127.0.0.1");
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.write(request);
    await once(socket, "close");
    return Buffer.concat(chunks).toString("utf8");
  }

  const h2cHeaders =
    "Host: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings\r\n" +
    "Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n";

  it("answers an h2c upgrade as HTTP/1.1", async () => {
    const reply = await exchange(`GET /healthz HTTP/1.1\r\n${h2cHeaders}\r\n`);

    assert.match(reply, /^HTTP\/1\.1 200 /);
    assert.match(reply, /\r\nConnection: close\r\n/i);
  });

  it("answers a websocket upgrade elsewhere", async () => {
    const reply = await exchange(
      "GET /nowhere HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n" +
        "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n" +
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );

    assert.match(reply, /^HTTP\/1\.1 404 /);
  });

  it("rejects an upgrade with a body", async () => {
    const reply = await exchange(
      `PUT /api/v1/bridges HTTP/1.1\r\n${h2cHeaders}Content-Length: 2\r\n\r\n{}`,
    );

    assert.match(reply, /^HTTP\/1\.1 400 /);
    assert.match(reply, /cannot carry a body/);
  });
});
