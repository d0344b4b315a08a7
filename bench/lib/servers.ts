import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { connect, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import {
  startRelay,
  type RelayProcess,
} from "../../test/support/relay-process.ts";
import { COMPILED_BARE, ensureCompiled } from "./compiled.ts";
import { ROOT } from "./results.ts";

/**
 * Relay settings for every benchmark. The rate limits are raised far
 * above any load a benchmark offers, so that they never cap a figure:
 * production defaults would reject most of a benchmark's handshakes and
 * requests. COMMAND_TIMEOUT_MS is the production default.
 */
export const BENCH_RELAY_ENV: Record<string, string> = {
  HANDSHAKES_PER_ADDRESS_PER_MINUTE: "1000000000",
  HANDSHAKES_PER_IDENTITY_PER_MINUTE: "1000000000",
  HANDSHAKES_PER_WORKER_PER_SECOND: "1000000000",
  REQUESTS_PER_SOCKET_PER_10S: "1000000000",
  COMMAND_TIMEOUT_MS: "5000",
};

/** Server processes under test, whose CPU time and memory a scenario reads. */
export interface ServerGroup {
  /** One URL per entry point: a relay instance, a bare process or a broker. */
  urls: string[];
  /** PIDs of every process that serves, read when called (workers may restart). */
  pids(): number[];
  stop(): Promise<void>;
}

export interface RelayGroup extends ServerGroup {
  relay: RelayProcess;
  /** PIDs of the workers only, without the primary. */
  workerPids(): number[];
}

/** Starts a relay: clustered with `workers` workers when `redisUrl` is set, else embedded. */
export async function startBenchRelay(
  redisUrl: string | undefined,
  workers = 2,
  env: Record<string, string> = {},
): Promise<RelayGroup> {
  ensureCompiled();
  const relay = await startRelay({
    ...(redisUrl === undefined ? {} : { redisUrl }),
    workers,
    env: { ...BENCH_RELAY_ENV, ...env },
    compiled: true,
    startTimeoutMs: 60_000,
  });
  const workerPids = (): number[] =>
    redisUrl === undefined
      ? [relay.pid]
      : relay.workers().map((worker) => worker.pid);
  return {
    relay,
    urls: [relay.url],
    workerPids,
    pids: () =>
      redisUrl === undefined ? [relay.pid] : [relay.pid, ...workerPids()],
    stop: async () => {
      await relay.stop();
    },
  };
}

/** Returns a loopback port that the OS reported free. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  if (typeof address !== "object" || address === null)
    throw new Error("no free port");
  return address.port;
}

/** Kills `child` when this process exits without stopping it. */
function killOnExit(child: ChildProcess): void {
  const kill = (): void => {
    child.kill("SIGKILL");
  };
  process.once("exit", kill);
  child.once("exit", () => process.removeListener("exit", kill));
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, "exit");
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
  await exited;
  clearTimeout(timer);
}

/** Starts one bare Socket.IO process and resolves with its port once it listens. */
async function startBareProcess(
  redisUrl: string | undefined,
  env: Record<string, string>,
): Promise<{ child: ChildProcess; port: number }> {
  ensureCompiled();
  const child = spawn(process.execPath, [COMPILED_BARE], {
    cwd: ROOT,
    env: { ...process.env, ...env, PORT: "0", REDIS_URL: redisUrl ?? "" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  killOnExit(child);
  let errors = "";
  child.stderr!.on("data", (chunk: Buffer) => {
    errors += chunk.toString();
  });
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(
        new Error(
          `bare Socket.IO server did not listen within 30 s: ${errors}`,
        ),
      );
    }, 30_000);
    createInterface({ input: child.stdout! }).on("line", (line) => {
      const message = JSON.parse(line) as { msg?: string; port?: number };
      if (message.msg !== "listening") return;
      clearTimeout(timer);
      resolve(message.port!);
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(
        new Error(`bare Socket.IO server exited with code ${code}: ${errors}`),
      );
    });
  });
  return { child, port };
}

/**
 * Starts `count` bare Socket.IO processes. With more than one, they share
 * `redisUrl` through the sharded Redis adapter.
 */
export async function startBare(
  count: number,
  redisUrl?: string,
  env: Record<string, string> = {},
): Promise<ServerGroup> {
  if (count > 1 && redisUrl === undefined) {
    throw new Error("several bare Socket.IO processes need a Redis URL");
  }
  const processes = await Promise.all(
    Array.from({ length: count }, () => startBareProcess(redisUrl, env)),
  );
  return {
    urls: processes.map(({ port }) => `http://127.0.0.1:${port}`),
    pids: () => processes.map(({ child }) => child.pid!),
    stop: async () => {
      await Promise.all(processes.map(({ child }) => stopChild(child)));
    },
  };
}

/** Returns why the MQTT baseline cannot run here, or null when it can. */
export function mosquittoMissing(): string | null {
  const found = spawnSync("sh", ["-c", "command -v mosquitto"], {
    stdio: "ignore",
  });
  return found.status === 0
    ? null
    : "mosquitto is not on PATH: install the Debian package mosquitto to measure the MQTT baseline";
}

function waitForPort(port: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const attempt = (): void => {
      const socket = connect({ host: "127.0.0.1", port });
      socket.once("connect", () => {
        socket.destroy();
        resolve();
      });
      socket.once("error", () => {
        socket.destroy();
        if (Date.now() > deadline) {
          reject(
            new Error(`nothing listens on port ${port} after ${timeoutMs} ms`),
          );
        } else {
          setTimeout(attempt, 50);
        }
      });
    };
    attempt();
  });
}

/**
 * Starts a private Mosquitto broker on a free loopback port, with Nagle's
 * algorithm off (`set_tcp_nodelay true`) and no persistence.
 */
export async function startMosquitto(): Promise<ServerGroup> {
  const port = await freePort();
  const dir = await mkdtemp(join(tmpdir(), "relay-bench-mosquitto-"));
  const config = join(dir, "mosquitto.conf");
  await writeFile(
    config,
    [
      `listener ${port} 127.0.0.1`,
      "allow_anonymous true",
      "set_tcp_nodelay true",
      "persistence false",
      "log_dest stderr",
      "log_type error",
      "log_type warning",
      "",
    ].join("\n"),
  );
  const child = spawn("mosquitto", ["-c", config], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  killOnExit(child);
  let errors = "";
  child.stderr!.on("data", (chunk: Buffer) => {
    errors += chunk.toString();
  });
  const exited = once(child, "exit").then(([code]) => {
    throw new Error(`mosquitto exited with code ${code}: ${errors}`);
  });
  exited.catch(() => {});
  await Promise.race([waitForPort(port, 10_000), exited]);
  return {
    urls: [`mqtt://127.0.0.1:${port}`],
    pids: () => [child.pid!],
    stop: async () => {
      await stopChild(child);
      await rm(dir, { recursive: true, force: true });
    },
  };
}
