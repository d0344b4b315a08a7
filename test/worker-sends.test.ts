import assert from "node:assert/strict";
import cluster, { type Worker } from "node:cluster";
import { once } from "node:events";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { Server } from "socket.io";
import { bindSessionsBeforeHandshake } from "../server/cluster/session-binding.ts";
import { READY_MESSAGE } from "../server/cluster/worker.ts";
import { capturingLogger } from "./support/capturing-logger.ts";
import { startRedisServer, type RedisServer } from "./support/redis-server.ts";
import { TEST_SECRET, type LogLine } from "./support/relay-process.ts";

const MAIN = fileURLToPath(new URL("../server/main.ts", import.meta.url));
const FATAL = 60;

describe("worker whose primary disconnects", function () {
  this.timeout(60_000);
  let redis: RedisServer | undefined;
  let worker: Worker | undefined;

  after(async () => {
    if (worker !== undefined && !worker.isDead())
      worker.process.kill("SIGKILL");
    await redis?.stop();
  });

  it("drains without an uncaught exception", async () => {
    redis = await startRedisServer();
    // The test process is the worker's primary here, so that it can
    // close the channel while the worker runs on.
    cluster.setupPrimary({
      exec: MAIN,
      execArgv: ["--import", "tsx"],
      serialization: "advanced",
      silent: true,
    });
    worker = cluster.fork({
      NODE_ENV: "test",
      PORT: "0",
      HOST: "127.0.0.1",
      LOG_FORMAT: "json",
      LOG_LEVEL: "info",
      AUTH_SECRET: TEST_SECRET,
      WORKERS: "1",
      REDIS_URL: redis.url,
      SHUTDOWN_TIMEOUT_MS: "4000",
      DRAIN_WINDOW_MS: "200",
    });
    const lines: LogLine[] = [];
    const output: string[] = [];
    for (const stream of [worker.process.stdout!, worker.process.stderr!]) {
      createInterface({ input: stream }).on("line", (text) => {
        try {
          lines.push(JSON.parse(text) as LogLine);
        } catch {
          output.push(text);
        }
      });
    }
    const exited = new Promise<number | null>((resolve) =>
      worker!.once("exit", (code: number | null) => resolve(code)),
    );
    await new Promise<void>((resolve, reject) => {
      worker!.on("message", (message: unknown) => {
        if (message === READY_MESSAGE) resolve();
      });
      void exited.then(() =>
        reject(new Error(`worker exited before ready: ${output.join("\n")}`)),
      );
    });

    // `worker.disconnect()` closes the channel and leaves the worker
    // running, so the drain that SIGTERM starts has no channel.
    worker.disconnect();
    await once(worker, "disconnect");
    worker.process.kill("SIGTERM");
    const code = await exited;

    const dump = JSON.stringify(lines);
    assert.equal(code, 0, dump);
    const fatal = lines.filter((line) => line.level === FATAL);
    assert.deepEqual(fatal, [], "no uncaught exception");
    assert.ok(
      lines.some((line) => line.msg === "shutting down"),
      `no shutdown line: ${dump}`,
    );
    assert.ok(
      lines.some((line) => line.msg === "stopped"),
      `no stopped line: ${dump}`,
    );
  });
});

describe("session binding without a channel", () => {
  it("answers the handshake at once", async function () {
    // Mocha started with an IPC channel would send to its parent.
    if (process.send !== undefined) this.skip();
    const { logger, lines } = capturingLogger();
    const httpServer = createServer();
    const io = new Server(httpServer);
    bindSessionsBeforeHandshake(io, logger);
    await new Promise<void>((resolve) =>
      httpServer.listen(0, "127.0.0.1", resolve),
    );
    try {
      const { port } = httpServer.address() as AddressInfo;
      const started = performance.now();
      const response = await fetch(
        `http://127.0.0.1:${port}/socket.io/?EIO=4&transport=polling`,
      );
      const body = await response.text();
      const elapsedMs = performance.now() - started;

      assert.equal(response.status, 200, body);
      assert.match(body, /^0\{"sid":/);
      // Without the check, the binding waits 1000 ms for a reply that cannot come.
      assert.ok(elapsedMs < 500, `handshake took ${elapsedMs} ms`);
      assert.deepEqual(lines, []);
    } finally {
      await io.close();
    }
  });
});
