import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { createServer, type Server as HttpServer } from "node:http";
import { Writable } from "node:stream";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { pino } from "pino";
import { createClient } from "redis";
import { Server, type Socket as ServerSocket } from "socket.io";
import { io as connectIo, type Socket } from "socket.io-client";
import type {
  Ack,
  LightSetAnswer,
  LightSetCommand,
} from "../../client-sdk/src/protocol.ts";
import { RelayError } from "../../server/errors.ts";
import {
  requestListeners,
  serveRequests,
} from "../../server/transport/requests.ts";
import {
  connectApp,
  connectBridge,
  connectElsewhere,
  randomBridgeId,
  request,
  requestData,
} from "../support/clients.ts";
import { answerLightSet, lightMap } from "../support/fake-bridge.ts";
import {
  isAlive,
  sleep,
  startRelayOnRedis,
  stopRelayOnRedis,
} from "../support/faults.ts";
import { light } from "../support/fixtures.ts";
import { openTcp, RawWebSocket } from "../support/raw-websocket.ts";
import type { RedisServer } from "../support/redis-server.ts";
import type { LogLine, RelayProcess } from "../support/relay-process.ts";
import { appToken, bridgeToken } from "../support/tokens.ts";

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL("../..", import.meta.url));

/** pino's numeric levels. */
const ERROR_LEVEL = 50;
const FATAL_LEVEL = 60;

/**
 * Sends a command from an app on one worker to a bridge on another and
 * checks the answer, so that both workers, the bus between them and Redis
 * are proven to serve.
 */
async function assertCommandRoundTrip(relay: RelayProcess): Promise<void> {
  const bridgeId = randomBridgeId();
  const bridge = await connectBridge(relay.url, bridgeId);
  const sockets: Socket[] = [bridge];
  try {
    answerLightSet(bridge, lightMap("lamp-1"));
    await requestData(bridge, "state:snapshot", { lights: [light("lamp-1")] });
    const { serverId } = await requestData<{ serverId: string }>(
      bridge,
      "relay:info",
      {},
    );
    const app = await connectElsewhere(
      () => connectApp(relay.url, [bridgeId]),
      serverId,
    );
    sockets.push(app.socket);
    const answer = await request<{
      light: { dimming: { brightness: number } };
    }>(app.socket, "light:set", {
      bridgeId,
      lightId: "lamp-1",
      change: { dimming: { brightness: 17 } },
      commandId: randomUUID(),
    });
    assert.ok(answer.ok, `light:set answered ${JSON.stringify(answer)}`);
    assert.equal(answer.data.light.dimming.brightness, 17);
  } finally {
    for (const socket of sockets) socket.close();
  }
}

/** Checks that the primary and the workers that started the test still run, and none died. */
function assertSameProcesses(
  relay: RelayProcess,
  workers: { pid: number }[],
): void {
  assert.equal(isAlive(relay.pid), true, "the primary exited");
  assert.deepEqual(
    relay.workers().map((worker) => worker.pid),
    workers.map((worker) => worker.pid),
    "the set of workers changed",
  );
  for (const worker of workers)
    assert.equal(isAlive(worker.pid), true, `worker ${worker.pid} exited`);
  const deaths = relay.logs.filter(
    (line) => line.msg === "worker died, restarting",
  );
  assert.deepEqual(deaths, [], "a worker died");
}

/** Resolves once `bridgeId` is listed offline by the relay. */
async function waitUntilOffline(url: string, bridgeId: string): Promise<void> {
  const app = await connectApp(url, [bridgeId], "read");
  try {
    const deadline = Date.now() + 5000;
    for (;;) {
      const { bridges } = await requestData<{
        bridges: { bridgeId: string; online: boolean }[];
      }>(app, "bridge:list", {});
      if (bridges[0]?.online === false) return;
      if (Date.now() > deadline)
        throw new Error(`bridge ${bridgeId} still listed online`);
      await sleep(50);
    }
  } finally {
    app.close();
  }
}

describe("crash isolation", function () {
  this.timeout(60_000);

  describe("relay processes", function () {
    let redis: RedisServer;
    let relay: RelayProcess;
    let workers: { serverId: string; pid: number }[];

    before(async () => {
      ({ redis, relay } = await startRelayOnRedis({
        workers: 2,
        env: { REDIS_KEY_PREFIX: `crash${randomBytes(4).toString("hex")}` },
      }));
      workers = relay.workers();
    });

    after(() => stopRelayOnRedis({ relay, redis }));

    it("survives killed Redis connections", async () => {
      const admin = createClient({ url: redis.url });
      admin.on("error", () => undefined);
      await admin.connect();
      const killedFrom = relay.logs.length;
      try {
        const normal = await admin.sendCommand([
          "CLIENT",
          "KILL",
          "TYPE",
          "normal",
        ]);
        const pubsub = await admin.sendCommand([
          "CLIENT",
          "KILL",
          "TYPE",
          "pubsub",
        ]);
        // Each worker has one command and one subscriber connection.
        assert.ok(Number(normal) >= 2, `killed ${normal} normal clients`);
        assert.ok(Number(pubsub) >= 2, `killed ${pubsub} pub/sub clients`);
      } finally {
        await admin.close();
      }

      const since = (line: LogLine): boolean =>
        relay.logs.indexOf(line) >= killedFrom;
      for (const worker of workers) {
        for (const connection of ["main", "subscriber"]) {
          const mine = (line: LogLine): boolean =>
            since(line) &&
            line.serverId === worker.serverId &&
            line.connection === connection;
          const error = await relay.waitForLog(
            (line) => mine(line) && line.msg === "redis connection error",
          );
          assert.equal(error.level, ERROR_LEVEL);
          await relay.waitForLog(
            (line) => mine(line) && line.msg === "redis connection restored",
          );
        }
      }
      assertSameProcesses(relay, workers);
      await assertCommandRoundTrip(relay);
    });

    it("survives TCP resets at any point", async () => {
      // 1. In the middle of an HTTP request line, before the primary has
      //    picked a worker.
      const partialHeader = await openTcp(relay.port);
      partialHeader.write("GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n");
      await sleep(50);
      partialHeader.resetAndDestroy();

      // 2. In the middle of a request body, which the primary forwards to
      //    the worker chunk by chunk.
      const partialBody = await openTcp(relay.port);
      partialBody.write(
        "PUT /api/v1/bridges/001788fffe4f3a2b/lights/lamp-1 HTTP/1.1\r\n" +
          "Host: 127.0.0.1\r\nContent-Type: application/json\r\n" +
          "Content-Length: 1000\r\n\r\n" +
          '{"on": {"on"',
      );
      await sleep(50);
      partialBody.resetAndDestroy();

      // 3. Right after the websocket upgrade request.
      const upgrade = await openTcp(relay.port);
      upgrade.write(
        "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n" +
          "Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
          `Sec-WebSocket-Key: ${randomBytes(16).toString("base64")}\r\n` +
          "Sec-WebSocket-Version: 13\r\n\r\n",
      );
      upgrade.resetAndDestroy();

      // 4. During a bridge's namespace handshake, while its claim runs.
      const claimingId = randomBridgeId();
      const claiming = await RawWebSocket.open(relay.port);
      claiming.send(
        `40/bridge,${JSON.stringify({ token: await bridgeToken(claimingId) })}`,
      );
      claiming.reset();

      // 5. Mid-session: a connected bridge sends a request and half of the
      //    next frame, then the connection is reset.
      const sessionId = randomBridgeId();
      const session = await RawWebSocket.open(relay.port);
      session.send(
        `40/bridge,${JSON.stringify({ token: await bridgeToken(sessionId) })}`,
      );
      await session.next((text) => text.startsWith("40/bridge,"));
      session.send(
        `42/bridge,1${JSON.stringify(["state:snapshot", { lights: [light("lamp-1")] }])}`,
      );
      await session.next((text) => text.startsWith("43/bridge,1"));
      session.send(`42/bridge,2${JSON.stringify(["relay:info", {}])}`);
      session.sendHalf(`42/bridge,3${JSON.stringify(["relay:info", {}])}`);
      session.reset();

      // 6. An app reset while its command waits for the bridge's answer.
      const slowId = randomBridgeId();
      const slowBridge = await connectBridge(relay.url, slowId);
      let answered = false;
      slowBridge.on(
        "light:set",
        (command: LightSetCommand, answer: (reply: LightSetAnswer) => void) => {
          setTimeout(() => {
            answered = true;
            answer({
              ok: true,
              data: { light: { ...light(command.lightId), ...command.change } },
            } as LightSetAnswer);
          }, 300);
        },
      );
      await requestData(slowBridge, "state:snapshot", {
        lights: [light("lamp-1")],
      });
      const app = await RawWebSocket.open(relay.port);
      app.send(
        `40/app,${JSON.stringify({ token: await appToken("reset-app", [slowId]) })}`,
      );
      await app.next((text) => text.startsWith("40/app,"));
      app.send(
        `42/app,1${JSON.stringify([
          "light:set",
          {
            bridgeId: slowId,
            lightId: "lamp-1",
            change: { on: { on: true } },
            commandId: randomUUID(),
          },
        ])}`,
      );
      await sleep(50);
      app.reset();

      const disconnected = await relay.waitForLog(
        (line) =>
          line.msg === "bridge disconnected" && line.bridgeId === sessionId,
      );
      assert.match(String(disconnected.reason), /^transport (error|close)$/);
      await waitUntilOffline(relay.url, sessionId);
      await waitUntilOffline(relay.url, claimingId);
      const deadline = Date.now() + 3000;
      while (!answered && Date.now() < deadline) await sleep(50);
      assert.equal(answered, true, "the slow bridge got the command");
      await sleep(200);
      slowBridge.close();

      assertSameProcesses(relay, workers);
      await assertCommandRoundTrip(relay);
    });
  });

  describe("request handler wrapper", () => {
    let httpServer: HttpServer;
    let ioServer: Server;
    let client: Socket;
    const logLines: LogLine[] = [];

    before(async () => {
      const stream = new Writable({
        write(chunk: Buffer, _encoding, done) {
          for (const text of chunk.toString().split("\n"))
            if (text !== "") logLines.push(JSON.parse(text) as LogLine);
          done();
        },
      });
      const logger = pino({ level: "debug" }, stream);
      httpServer = createServer();
      ioServer = new Server(httpServer);
      const requests = requestListeners(
        {
          "test:throw-async": async () => {
            throw new TypeError("async handler bug");
          },
          // Not an async function, so it throws before returning a promise.
          "test:throw-sync": (() => {
            throw new RangeError("sync handler bug");
          }) as () => Promise<never>,
          "test:reject-contract": async () => {
            throw new RelayError("NOT_FOUND", "no light lamp-9");
          },
          "test:echo": async (payload) => payload,
        },
        {
          maxPayloadBytes: 1024,
          maxEventsPerWindow: 1000,
          inFlight: { requests: 1000, bytes: 1_000_000 },
          logger,
        },
      );
      ioServer.on("connection", (socket: ServerSocket) => {
        serveRequests(socket, requests);
      });
      await new Promise<void>((resolve) =>
        httpServer.listen(0, "127.0.0.1", resolve),
      );
      const address = httpServer.address();
      const port =
        typeof address === "object" && address !== null ? address.port : 0;
      client = connectIo(`http://127.0.0.1:${port}`, {
        transports: ["websocket"],
        reconnection: false,
      });
      await new Promise<void>((resolve) => client.once("connect", resolve));
    });

    after(async () => {
      client?.close();
      await new Promise<void>((resolve) => ioServer.close(() => resolve()));
    });

    const ask = (event: string, payload: unknown = {}): Promise<Ack<unknown>> =>
      client.timeout(2000).emitWithAck(event, payload) as Promise<Ack<unknown>>;

    for (const [event, message] of [
      ["test:throw-async", "async handler bug"],
      ["test:throw-sync", "sync handler bug"],
    ] as const) {
      it(`answers INTERNAL for ${event}`, async () => {
        const answer = await ask(event);
        assert.deepEqual(answer, {
          ok: false,
          error: { code: "INTERNAL", message: "internal error" },
        });
        const logged = logLines.find(
          (line) =>
            line.msg === "request handler failed" && line.event === event,
        );
        assert.ok(logged, "the failure is logged");
        assert.equal(logged.level, ERROR_LEVEL);
        const error = logged.err as { message: string; stack: string };
        assert.equal(error.message, message);
        assert.match(error.stack, /crash-isolation\.test\.ts/);
        assert.equal(client.connected, true, "the socket stays connected");
        assert.deepEqual(await ask("test:echo", { n: 1 }), {
          ok: true,
          data: { n: 1 },
        });
      });
    }

    it("passes contract errors through", async () => {
      const answer = await ask("test:reject-contract");
      assert.deepEqual(answer, {
        ok: false,
        error: { code: "NOT_FOUND", message: "no light lamp-9" },
      });
    });
  });

  describe("process error handlers", () => {
    /**
     * Runs a Node process with the relay's crash handlers and a stand-in
     * shutdown handler, which rejects promises and then throws twice, and
     * returns its exit code and log lines.
     */
    async function runCrashingProcess(): Promise<{
      code: number;
      lines: LogLine[];
    }> {
      const script = `
        const { createLogger } = await import("./server/logger.ts");
        const { installCrashHandlers } = await import("./server/crash-handlers.ts");
        const { setShutdownHandler } = await import("./server/cluster/shutdown.ts");
        const logger = createLogger({ logLevel: "info", logFormat: "json" });
        installCrashHandlers(logger);
        setShutdownHandler((reason, exitCode) => {
          logger.info({ reason, exitCode }, "shutdown requested");
          setTimeout(() => process.exit(exitCode), 300);
        });
        for (let i = 0; i < 5; i += 1) Promise.reject(new Error("rejected on purpose"));
        setTimeout(() => logger.info("still running"), 200);
        setTimeout(() => { throw new Error("thrown on purpose"); }, 400);
        setTimeout(() => { throw new Error("thrown again"); }, 500);
        setTimeout(() => process.exit(0), 5000);
      `;
      let code: number;
      let stdout: string;
      try {
        ({ stdout } = await run(
          process.execPath,
          ["--import", "tsx", "--input-type=module", "-e", script],
          { cwd: ROOT, timeout: 15_000 },
        ));
        code = 0;
      } catch (error) {
        const failure = error as { code: number; stdout: string };
        code = failure.code;
        stdout = failure.stdout;
      }
      const lines = stdout
        .split("\n")
        .filter((text) => text.startsWith("{"))
        .map((text) => JSON.parse(text) as LogLine);
      return { code, lines };
    }

    it("logs rejections and drains on a throw", async () => {
      const { code, lines } = await runCrashingProcess();
      const messages = lines.map((line) => line.msg);

      const rejections = lines.filter(
        (line) => line.msg === "unhandled promise rejection",
      );
      assert.equal(rejections.length, 1, "repeats within a second are counted");
      assert.equal(rejections[0]?.level, ERROR_LEVEL);
      assert.equal(
        (rejections[0]?.err as { message: string }).message,
        "rejected on purpose",
      );
      assert.ok(messages.includes("still running"), messages.join(", "));

      const fatal = lines.find(
        (line) => line.msg === "uncaught exception, shutting down",
      );
      assert.ok(fatal, messages.join(", "));
      assert.equal(fatal.level, FATAL_LEVEL);
      assert.equal(
        (fatal.err as { message: string }).message,
        "thrown on purpose",
      );
      const shutdown = lines.find((line) => line.msg === "shutdown requested");
      assert.ok(shutdown, messages.join(", "));
      assert.equal(shutdown.reason, "uncaught exception");
      assert.equal(shutdown.exitCode, 1);

      // The second throw comes during the graceful shutdown and ends it.
      const second = lines.find(
        (line) => line.msg === "uncaught exception while shutting down",
      );
      assert.ok(second, messages.join(", "));
      assert.equal(code, 1);
    });
  });
});
