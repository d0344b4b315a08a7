import assert from "node:assert/strict";
import { createServer, type Server as HttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import { pino } from "pino";
import { Server, type Socket as ServerSocket } from "socket.io";
import { io, type Socket } from "socket.io-client";
import { TokenVerifier } from "../server/auth/verify.ts";
import { loadConfig } from "../server/config.ts";
import { handshakeMiddleware } from "../server/transport/handshake.ts";
import { RateLimits } from "../server/transport/rate-limits.ts";
import { TEST_SECRET } from "./support/relay-process.ts";
import { bridgeToken } from "./support/tokens.ts";

const BRIDGE_ID = "0017880a1b2c3d4e";

describe("handshake middleware", () => {
  let httpServer: HttpServer;
  let server: Server;
  let client: Socket;
  let admitted: ServerSocket;

  before(async () => {
    const config = loadConfig({});
    httpServer = createServer();
    server = new Server(httpServer);
    const bridges = server.of("/bridge");
    bridges.use(
      handshakeMiddleware("bridge", {
        verifier: new TokenVerifier({ ...config.auth, secret: TEST_SECRET }),
        limits: new RateLimits(config, undefined),
        logger: pino({ level: "silent" }),
        isDraining: () => false,
      }),
    );
    const connected = new Promise<ServerSocket>((resolve) =>
      bridges.once("connection", resolve),
    );
    await new Promise<void>((resolve) =>
      httpServer.listen(0, "127.0.0.1", resolve),
    );
    const { port } = httpServer.address() as AddressInfo;
    client = io(`http://127.0.0.1:${port}/bridge`, {
      transports: ["websocket"],
      auth: { token: await bridgeToken(BRIDGE_ID) },
    });
    admitted = await connected;
  });

  after(async () => {
    client.close();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it("keeps the verified identity", () => {
    assert.deepEqual(admitted.data, {
      identity: { role: "bridge", bridgeId: BRIDGE_ID, exp: undefined },
    });
  });

  it("drops the token after admission", () => {
    assert.deepEqual(admitted.handshake.auth, {});
  });

  it("drops the upgrade request and its headers", () => {
    assert.equal(admitted.conn.request, undefined);
    assert.deepEqual(admitted.handshake.headers, {});
    assert.equal(admitted.handshake.address, "127.0.0.1");
  });
});

describe("handshakes from a flooding address", () => {
  let httpServer: HttpServer;
  let server: Server;
  const namespace = "/bridge";

  before(async () => {
    const config = loadConfig({
      HANDSHAKES_PER_ADDRESS_PER_MINUTE: "3",
      HANDSHAKES_PER_WORKER_PER_SECOND: "5",
    });
    httpServer = createServer();
    server = new Server(httpServer);
    server.of("/bridge").use(
      handshakeMiddleware("bridge", {
        verifier: new TokenVerifier({ ...config.auth, secret: TEST_SECRET }),
        limits: new RateLimits(config, undefined),
        logger: pino({ level: "silent" }),
        isDraining: () => false,
      }),
    );
    await new Promise<void>((resolve) =>
      httpServer.listen(0, "127.0.0.1", resolve),
    );
  });

  after(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  /** Opens a handshake to `host` from `localAddress` and resolves with `ok` or the error. */
  async function handshake(host: string, localAddress: string) {
    const { port } = httpServer.address() as AddressInfo;
    // engine.io-client passes `localAddress` to ws, but its types omit it.
    const source = { localAddress };
    const client = io(`http://${host}:${port}${namespace}`, {
      transports: ["websocket"],
      reconnection: false,
      forceNew: true,
      auth: { token: await bridgeToken(BRIDGE_ID) },
      ...source,
    });
    try {
      return await new Promise<string>((resolve) => {
        client.once("connect", () => resolve("ok"));
        client.once("connect_error", (error: Error & { data?: unknown }) => {
          const data = error.data as { code?: string } | undefined;
          resolve(`${data?.code ?? "?"}: ${error.message}`);
        });
      });
    } finally {
      client.close();
    }
  }

  it("leaves the process budget to others", async () => {
    let flooding = true;
    const flood = (async () => {
      while (flooding) {
        await handshake("127.0.0.1", "127.0.0.2");
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    })();
    const outcomes: string[] = [];
    try {
      // The flooding address uses up its own limit first.
      await new Promise((resolve) => setTimeout(resolve, 300));
      for (let attempt = 0; attempt < 3; attempt += 1) {
        outcomes.push(await handshake("127.0.0.1", "127.0.0.1"));
        await new Promise((resolve) => setTimeout(resolve, 400));
      }
    } finally {
      flooding = false;
      await flood;
    }

    assert.deepEqual(outcomes, ["ok", "ok", "ok"]);
  });
});
