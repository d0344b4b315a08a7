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
