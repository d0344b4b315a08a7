import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { appendFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

/** HS256 secret every test relay is started with. */
export const TEST_SECRET = "test-secret-0123456789abcdef0123456789abcdef";

export interface LogLine {
  level: number;
  msg: string;
  pid?: number;
  serverId?: string;
  [field: string]: unknown;
}

export interface RelayProcess {
  url: string;
  port: number;
  /** PID of the process started: the primary, or the embedded relay. */
  pid: number;
  logs: LogLine[];
  /** Raw output that was not a JSON log line (startup errors). */
  output: string[];
  /** Server IDs and PIDs of the workers that reported ready, in order. */
  workers: () => { serverId: string; pid: number }[];
  waitForLog: (
    match: (line: LogLine) => boolean,
    timeoutMs?: number,
  ) => Promise<LogLine>;
  /** Sends `signal` and resolves with the exit code once the process has exited. */
  stop: (signal?: NodeJS.Signals) => Promise<number | null>;
  /** Resolves with the exit code once the process has exited, without signalling it. */
  waitForExit: () => Promise<number | null>;
  child: ChildProcess;
}

export interface RelayOptions {
  redisUrl?: string;
  /** Seed node URLs of a Redis Cluster, passed as REDIS_CLUSTER_NODES; exclusive with `redisUrl`. */
  redisClusterNodes?: string[];
  workers?: number;
  env?: Record<string, string>;
  /** Run the compiled JavaScript in dist/ instead of the TypeScript sources. */
  compiled?: boolean;
  startTimeoutMs?: number;
  /**
   * Start the relay in a process group of its own, which its workers
   * join, so that a test can signal the group as a terminal does.
   */
  ownProcessGroup?: boolean;
}

/** Returns the workers a relay started with `options` has: none when embedded. */
function workerCountOf(options: RelayOptions): number {
  const usesRedis =
    options.redisUrl !== undefined || options.redisClusterNodes !== undefined;
  return usesRedis ? (options.workers ?? 2) : 0;
}

/** A relay process that was started and may not serve yet. */
export type LaunchedRelay = Pick<
  RelayProcess,
  "logs" | "output" | "workers" | "waitForLog" | "child"
> & {
  /** Resolves once the process has exited. */
  exited: Promise<unknown>;
};

/** Starts a real relay process on a free loopback port and waits until it serves. */
export async function startRelay(
  options: RelayOptions = {},
): Promise<RelayProcess> {
  const workerCount = workerCountOf(options);
  const { logs, output, workers, waitForLog, child, exited } =
    launchRelay(options);
  const timeoutMs = options.startTimeoutMs ?? 20_000;
  let listening: LogLine;
  try {
    listening = await waitForLog(
      (line) =>
        typeof line.port === "number" && line.msg.startsWith("relay listening"),
      timeoutMs,
    );
    const startedAt = Date.now();
    while (workers().length < workerCount) {
      await waitForLog(
        (line) =>
          line.msg === "worker ready" && workers().length >= workerCount,
        timeoutMs - (Date.now() - startedAt),
      );
    }
  } catch (error) {
    // A relay that did not start must not outlive the test. Its workers
    // exit when the primary's IPC channel closes.
    child.kill("SIGKILL");
    throw error;
  }
  const port = listening.port as number;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    pid: child.pid!,
    logs,
    output,
    workers,
    waitForLog,
    child,
    stop: async (signal = "SIGTERM") => {
      if (child.exitCode !== null || child.signalCode !== null)
        return child.exitCode;
      child.kill(signal);
      const [code] = (await exited) as [number | null];
      return code;
    },
    waitForExit: async () => {
      const [code] = (await exited) as [number | null];
      return code;
    },
  };
}

/**
 * Starts a real relay process on a free loopback port and returns at once,
 * for a test that watches its logs before it serves. The caller kills it.
 */
export function launchRelay(options: RelayOptions = {}): LaunchedRelay {
  const workerCount = workerCountOf(options);
  const args = options.compiled
    ? ["dist/server/main.js"]
    : ["--import", "tsx", "server/main.ts"];
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    env: {
      ...process.env,
      NODE_ENV: "test",
      PORT: "0",
      HOST: "127.0.0.1",
      LOG_FORMAT: "json",
      LOG_LEVEL: "info",
      AUTH_SECRET: TEST_SECRET,
      WORKERS: String(Math.max(workerCount, 1)),
      REDIS_URL: options.redisUrl ?? "",
      REDIS_CLUSTER_NODES: options.redisClusterNodes?.join(",") ?? "",
      COMMAND_TIMEOUT_MS: "1500",
      SHUTDOWN_TIMEOUT_MS: "4000",
      // Tests that stop a relay with clients connected need no herd protection.
      DRAIN_WINDOW_MS: "200",
      ...options.env,
    },
    stdio: ["ignore", "pipe", "pipe"],
    detached: options.ownProcessGroup ?? false,
  });
  const logs: LogLine[] = [];
  const output: string[] = [];
  const waiters = new Set<(line: LogLine) => void>();
  const onLine = (text: string): void => {
    if (process.env.RELAY_LOG_FILE)
      appendFileSync(process.env.RELAY_LOG_FILE, `${text}\n`);
    let line: LogLine;
    try {
      line = JSON.parse(text) as LogLine;
    } catch {
      output.push(text);
      return;
    }
    logs.push(line);
    for (const waiter of waiters) waiter(line);
  };
  createInterface({ input: child.stdout! }).on("line", onLine);
  createInterface({ input: child.stderr! }).on("line", onLine);
  const exited = once(child, "exit");

  const waitForLog = (
    match: (line: LogLine) => boolean,
    timeoutMs = 10_000,
  ): Promise<LogLine> => {
    const found = logs.find(match);
    if (found !== undefined) return Promise.resolve(found);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(
          new Error(
            `no matching relay log line within ${timeoutMs} ms; output: ${output.join("\n")}`,
          ),
        );
      }, timeoutMs);
      const check = (line: LogLine): void => {
        if (!match(line)) return;
        clearTimeout(timer);
        waiters.delete(check);
        resolve(line);
      };
      waiters.add(check);
      void exited.then(() => {
        if (!waiters.has(check)) return;
        clearTimeout(timer);
        waiters.delete(check);
        reject(
          new Error(
            `relay exited before the expected log line; output: ${output.join("\n")}`,
          ),
        );
      });
    });
  };

  const workers = (): { serverId: string; pid: number }[] =>
    logs
      .filter((line) => line.msg === "worker ready")
      .map((line) => ({
        serverId: String(line.serverId),
        pid: Number(line.pid),
      }));
  return { logs, output, workers, waitForLog, child, exited };
}
