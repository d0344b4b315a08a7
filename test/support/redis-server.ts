import { spawn, type ChildProcess } from "node:child_process";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createClient, type RedisClientType } from "redis";

/** A private `redis-server` process bound to loopback, for tests. */
export interface RedisServer {
  port: number;
  /** `redis://127.0.0.1:<port>`, for `createClient({ url })`. */
  url: string;
  /** Stops the server (SIGTERM, then SIGKILL after 5 s) and waits for it to exit. */
  stop(): Promise<void>;
  /** Stops the server and starts a new, empty one on the same port. */
  restart(): Promise<void>;
}

/** The machine's shared Redis port, which tests must never touch. */
const SHARED_REDIS_PORT = 6379;
const STARTUP_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 5_000;

/**
 * Starts `redis-server` (from PATH) on a free loopback port chosen by the OS,
 * without persistence, and resolves once it replies to PING.
 */
export async function startRedisServer(): Promise<RedisServer> {
  const port = await findFreePort();
  const dir = await mkdtemp(join(tmpdir(), "relay-test-redis-"));
  let child = await spawnRedis(port, dir);

  const stop = async (): Promise<void> => {
    await stopProcess(child);
    await rm(dir, { recursive: true, force: true });
  };
  const restart = async (): Promise<void> => {
    await stopProcess(child);
    // A server stopped with stop() has lost its folder; restart() works after it too.
    await mkdir(dir, { recursive: true });
    child = await spawnRedis(port, dir);
  };
  return { port, url: `redis://127.0.0.1:${port}`, stop, restart };
}

/**
 * Returns a port the OS reported free. Another process may still take it
 * before redis-server binds it, which then fails startup with a clear error.
 */
export async function findFreePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const server = createServer();
      server.once("error", reject);
      server.listen(0, "127.0.0.1", () => {
        const address = server.address();
        const found =
          typeof address === "object" && address !== null ? address.port : 0;
        server.close(() => resolve(found));
      });
    });
    if (port !== 0 && port !== SHARED_REDIS_PORT) return port;
  }
}

/**
 * Starts `redis-server` on `port` with its working folder in `dir`, adding
 * `extraArgs` to its command line, and resolves once it replies to PING.
 */
export async function spawnRedis(
  port: number,
  dir: string,
  extraArgs: string[] = [],
): Promise<ChildProcess> {
  const child = spawn(
    "redis-server",
    [
      "--port",
      String(port),
      "--bind",
      "127.0.0.1",
      "--save",
      "",
      "--appendonly",
      "no",
      "--dir",
      dir,
      ...extraArgs,
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  // Kill the server even when the test process exits without calling stop().
  const killOnExit = (): void => {
    child.kill("SIGKILL");
  };
  process.once("exit", killOnExit);
  child.once("exit", () => process.removeListener("exit", killOnExit));

  let output = "";
  const collect = (chunk: Buffer): void => {
    output += chunk.toString();
  };
  child.stdout?.on("data", collect);
  child.stderr?.on("data", collect);

  const exited = new Promise<never>((_, reject) => {
    child.once("error", reject);
    child.once("exit", (code, signal) => {
      reject(
        new Error(
          `redis-server on port ${port} exited during startup (code ${code}, signal ${signal}):\n${output}`,
        ),
      );
    });
  });
  exited.catch(() => {});

  try {
    await Promise.race([waitForPong(port), exited]);
  } catch (error) {
    await stopProcess(child);
    throw error;
  }
  return child;
}

/** Polls PING over a raw connection until `+PONG` arrives or the startup timeout passes. */
async function waitForPong(port: number): Promise<void> {
  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  while (Date.now() < deadline) {
    if (await pingOnce(port)) return;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(
    `redis-server on port ${port} did not reply to PING within ${STARTUP_TIMEOUT_MS} ms`,
  );
}

function pingOnce(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port });
    let reply = "";
    const finish = (result: boolean): void => {
      socket.destroy();
      resolve(result);
    };
    socket.setTimeout(1000, () => finish(false));
    socket.once("error", () => finish(false));
    socket.once("connect", () => socket.write("PING\r\n"));
    socket.on("data", (chunk) => {
      reply += chunk.toString();
      if (reply.includes("\r\n")) finish(reply.startsWith("+PONG"));
    });
  });
}

/** Stops `child` with SIGTERM, then SIGKILL after 5 s, and waits for it to exit. */
export async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) =>
    child.once("exit", () => resolve()),
  );
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), STOP_TIMEOUT_MS);
  try {
    await exited;
  } finally {
    clearTimeout(timer);
  }
}

/** Local ports of the connections that Redis on `plainPort` serves, the asking one left out. */
export async function connectionPorts(plainPort: number): Promise<number[]> {
  const admin: RedisClientType = createClient({
    url: `redis://127.0.0.1:${plainPort}`,
  });
  await admin.connect();
  try {
    const list = await admin.clientList();
    const own = await admin.clientId();
    return list
      .filter((client) => Number(client.id) !== own)
      .map((client) => Number((client.laddr ?? "").split(":").pop()));
  } finally {
    await admin.close();
  }
}
