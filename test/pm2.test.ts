import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { connect, createServer } from "node:net";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { io, type Socket } from "socket.io-client";
import type {
  Ack,
  Light,
  LightSetCommand,
  LightSetAnswer,
  LightsChangedEvent,
} from "../client-sdk/src/protocol.ts";
import { startRedisServer, type RedisServer } from "./support/redis-server.ts";
import { appToken, bridgeToken } from "./support/tokens.ts";

const run = promisify(execFile);

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const PM2 = join(ROOT, "node_modules", ".bin", "pm2");
const COMPILED_ENTRY = join(ROOT, "dist", "server", "main.js");
const APP_NAME = "bridge-relay";

const PM2_COMMAND_TIMEOUT_MS = 30_000;
const BUILD_TIMEOUT_MS = 180_000;
const READY_TIMEOUT_MS = 30_000;
const ACK_TIMEOUT_MS = 5_000;
/** SHUTDOWN_TIMEOUT_MS given to the relay, in ms. */
const SHUTDOWN_TIMEOUT_MS = 4_000;

/** The slice of `pm2 jlist` output this test reads. */
interface Pm2Process {
  name: string;
  pid: number;
  pm2_env: { status: string; exec_mode: string; kill_timeout: number };
}

/** Returns a loopback port that the OS reported free a moment ago. */
function findFreePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port =
        typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

/** Resolves true when a TCP connection to the loopback `port` succeeds. */
function acceptsConnections(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port });
    socket.setTimeout(1000, () => {
      socket.destroy();
      resolve(false);
    });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Returns the PIDs of the direct children of `pid`, from `ps` (as PM2 does). */
async function childProcesses(pid: number): Promise<number[]> {
  const { stdout } = await run("ps", ["-A", "-o", "pid=,ppid="]);
  const children: number[] = [];
  for (const line of stdout.split("\n")) {
    const [child, parent] = line.trim().split(/\s+/).map(Number);
    if (parent === pid && child !== undefined) children.push(child);
  }
  return children;
}

async function pollUntil(
  condition: () => Promise<boolean> | boolean,
  timeoutMs: number,
): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await condition()) return true;
    if (Date.now() >= deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

/**
 * Connects a Socket.IO client and resolves once the namespace handshake
 * succeeds. The client's own `timeout` covers only the Engine.IO
 * connection, so a timer bounds the namespace handshake too.
 */
function connectClient(
  url: string,
  token: string,
  transport: "websocket" | "polling",
): Promise<Socket> {
  const socket = io(url, {
    auth: { token },
    transports: [transport],
    reconnection: false,
    timeout: ACK_TIMEOUT_MS,
  });
  return new Promise((resolve, reject) => {
    const fail = (reason: string): void => {
      clearTimeout(timer);
      socket.close();
      reject(
        new Error(`could not connect to ${url} over ${transport}: ${reason}`),
      );
    };
    const timer = setTimeout(
      () => fail(`no handshake answer within ${ACK_TIMEOUT_MS} ms`),
      ACK_TIMEOUT_MS,
    );
    socket.once("connect", () => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once("connect_error", (error) => fail(error.message));
  });
}

function request<T>(
  socket: Socket,
  event: string,
  payload: unknown,
): Promise<Ack<T>> {
  return socket.timeout(ACK_TIMEOUT_MS).emitWithAck(event, payload);
}

describe("relay under PM2", function () {
  const bridgeId = "001788fffe4f3a2b";
  const secret = `pm2-test-${randomBytes(24).toString("hex")}`;
  const lamp: Light = {
    id: "lamp-1",
    type: "light",
    metadata: { name: "Hallway" },
    on: { on: true },
    dimming: { brightness: 80 },
  };

  let redis: RedisServer | undefined;
  let pm2Home: string | undefined;
  let pm2Env: NodeJS.ProcessEnv = {};
  let port = 0;
  let url = "";
  const sockets: Socket[] = [];

  const pm2 = (...args: string[]) =>
    run(PM2, args, {
      cwd: ROOT,
      env: pm2Env,
      timeout: PM2_COMMAND_TIMEOUT_MS,
    });

  /** Returns the end of the relay's PM2 log files, for failure messages. */
  const logTail = (): string => {
    if (pm2Home === undefined) return "";
    const parts = ["out", "error"].map((kind) => {
      const file = join(pm2Home!, "logs", `${APP_NAME}.${kind}.log`);
      const text = existsSync(file) ? readFileSync(file, "utf8") : "(none)";
      return `--- ${kind} log ---\n${text.slice(-4000)}`;
    });
    return parts.join("\n");
  };

  /** Counts the relay's JSON log lines whose `msg` is `message`. */
  const countLogLines = (message: string): number => {
    const file = join(pm2Home!, "logs", `${APP_NAME}.out.log`);
    if (!existsSync(file)) return 0;
    return readFileSync(file, "utf8")
      .split("\n")
      .filter((line) => line.includes(`"msg":${JSON.stringify(message)}`))
      .length;
  };

  const listProcesses = async (): Promise<Pm2Process[]> => {
    const { stdout } = await pm2("jlist");
    return JSON.parse(stdout) as Pm2Process[];
  };

  before(async function () {
    this.timeout(BUILD_TIMEOUT_MS + READY_TIMEOUT_MS + 30_000);
    if (!existsSync(COMPILED_ENTRY)) {
      await run("npm", ["run", "build"], {
        cwd: ROOT,
        timeout: BUILD_TIMEOUT_MS,
      });
    }
    redis = await startRedisServer();
    port = await findFreePort();
    url = `http://127.0.0.1:${port}`;
    // A short PM2_HOME keeps PM2's socket paths under the 108-byte limit
    // of Unix socket addresses; a longer one makes PM2 hang.
    pm2Home = mkdtempSync("/tmp/pm2-");
    pm2Env = {
      ...process.env,
      PM2_HOME: pm2Home,
      // The ecosystem file must set production mode whatever the caller's value.
      NODE_ENV: "test",
      AUTH_SECRET: secret,
      REDIS_URL: redis.url,
      REDIS_KEY_PREFIX: `pm2test${randomBytes(4).toString("hex")}`,
      PORT: String(port),
      HOST: "127.0.0.1",
      WORKERS: "2",
      SHUTDOWN_TIMEOUT_MS: String(SHUTDOWN_TIMEOUT_MS),
      LOG_LEVEL: "info",
    };
    delete pm2Env.RELAY_LOG_DIR;

    await pm2("start", "ecosystem.config.js");
    // NOTE: the primary listens before its workers are ready, and a
    // connection handed to a worker that is not ready yet hangs. So the
    // test waits for every worker's "worker ready" line before it connects,
    // and bounds each readiness request.
    const workersReady = await pollUntil(
      () => countLogLines("worker ready") >= 2,
      READY_TIMEOUT_MS,
    );
    assert.ok(
      workersReady,
      `workers not ready within ${READY_TIMEOUT_MS} ms\n${logTail()}`,
    );
    const ready = await pollUntil(async () => {
      try {
        const response = await fetch(`${url}/readyz`, {
          signal: AbortSignal.timeout(2000),
        });
        return response.status === 200;
      } catch {
        return false;
      }
    }, READY_TIMEOUT_MS);
    assert.ok(
      ready,
      `/readyz did not return 200 within ${READY_TIMEOUT_MS} ms\n${logTail()}`,
    );
  });

  after(async function () {
    this.timeout(3 * PM2_COMMAND_TIMEOUT_MS);
    for (const socket of sockets) socket.close();
    if (pm2Home !== undefined) {
      // Both commands are harmless when the last test already ran them.
      await pm2("delete", "all").catch(() => undefined);
      await pm2("kill").catch(() => undefined);
      rmSync(pm2Home, { recursive: true, force: true });
    }
    await redis?.stop();
  });

  afterEach(function () {
    if (this.currentTest?.state === "failed") console.error(logTail());
  });

  it("runs one fork-mode process", async function () {
    const processes = await listProcesses();
    assert.equal(processes.length, 1);
    assert.equal(processes[0]?.name, APP_NAME);
    assert.equal(processes[0]?.pm2_env.exec_mode, "fork_mode");
    assert.equal(processes[0]?.pm2_env.status, "online");
    // The primary exits at the latest 1 s after the shutdown timeout, and
    // PM2 must not SIGKILL it before that.
    const killTimeout = processes[0]?.pm2_env.kill_timeout ?? 0;
    assert.ok(
      killTimeout > SHUTDOWN_TIMEOUT_MS + 1000,
      `kill_timeout ${killTimeout} ms`,
    );
  });

  it("relays a command round trip", async function () {
    this.timeout(4 * ACK_TIMEOUT_MS);
    const bridge = await connectClient(
      `${url}/bridge`,
      await bridgeToken(bridgeId, { secret }),
      "websocket",
    );
    sockets.push(bridge);
    const commands: LightSetCommand[] = [];
    bridge.on(
      "light:set",
      (command: LightSetCommand, answer: (reply: LightSetAnswer) => void) => {
        commands.push(command);
        answer({ ok: true, data: { light: { ...lamp, ...command.change } } });
      },
    );
    const snapshot = await request<{ version: number }>(
      bridge,
      "state:snapshot",
      { lights: [lamp] },
    );
    assert.deepEqual(snapshot, { ok: true, data: { version: 1 } });

    // Long-polling only works when the relay's own sticky balancer is in
    // front of its workers, so the app uses it on purpose.
    const app = await connectClient(
      `${url}/app`,
      await appToken("user-1", [bridgeId], "read control", { secret }),
      "polling",
    );
    sockets.push(app);
    const subscribed = await request<{ online: boolean; version: number }>(
      app,
      "bridge:subscribe",
      { bridgeId },
    );
    assert.ok(subscribed.ok, JSON.stringify(subscribed));
    assert.equal(subscribed.data.online, true);
    assert.equal(subscribed.data.version, 1);

    const changed = new Promise<LightsChangedEvent>((resolve) =>
      app.once("lights:changed", resolve),
    );
    const commandId = randomUUID();
    const answer = await request<{ light: Light }>(app, "light:set", {
      bridgeId,
      lightId: lamp.id,
      change: { on: { on: false } },
      commandId,
    });
    assert.deepEqual(answer, {
      ok: true,
      data: { light: { ...lamp, on: { on: false } } },
    });
    assert.equal(commands.length, 1);
    assert.equal(commands[0]?.commandId, commandId);
    const event = await changed;
    assert.equal(event.version, 2);
    assert.deepEqual(event.lights, [{ ...lamp, on: { on: false } }]);
  });

  it("reports no pid in production", async function () {
    const app = await connectClient(
      `${url}/app`,
      await appToken("user-2", [], "read", { secret }),
      "websocket",
    );
    sockets.push(app);
    const info = await request<{ serverId: string; pid?: number }>(
      app,
      "relay:info",
      {},
    );
    assert.ok(info.ok, JSON.stringify(info));
    assert.equal(typeof info.data.serverId, "string");
    assert.equal(info.data.pid, undefined);
  });

  it("stops the process tree on delete", async function () {
    this.timeout(3 * PM2_COMMAND_TIMEOUT_MS);
    const [relay] = await listProcesses();
    assert.ok(relay, "PM2 lists no relay process");
    const workers = await childProcesses(relay.pid);
    assert.equal(workers.length, 2, `worker PIDs: ${workers.join(", ")}`);
    for (const socket of sockets) socket.close();

    await pm2("delete", "all");
    await pm2("kill");

    const closed = await pollUntil(
      async () => !(await acceptsConnections(port)),
      5000,
    );
    assert.ok(closed, `port ${port} still accepts connections\n${logTail()}`);
    assert.equal(processExists(relay.pid), false);
    for (const pid of workers) {
      assert.equal(processExists(pid), false, `worker ${pid} still runs`);
    }
  });
});
