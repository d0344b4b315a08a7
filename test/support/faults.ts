import { readFileSync } from "node:fs";
import { RelayClientError } from "../../client-sdk/src/index.ts";
import { startFakeBridge, type FakeBridge } from "./fake-bridge.ts";
import { send } from "./http.ts";
import { startRedisServer, type RedisServer } from "./redis-server.ts";
import {
  startRelay,
  type RelayOptions,
  type RelayProcess,
} from "./relay-process.ts";

/** Prints a measured figure on a line starting with `fault figure:`, where docs writers look for them. */
export function printFigure(text: string): void {
  console.log(`fault figure: ${text}`);
}

/**
 * Calls `check` every `intervalMs` until it returns true, and returns the
 * time that took in ms. Throws after `timeoutMs`, naming `what`.
 */
export async function waitUntil(
  what: string,
  check: () => boolean | Promise<boolean>,
  timeoutMs: number,
  intervalMs = 25,
): Promise<number> {
  const startedAt = Date.now();
  for (;;) {
    if (await check()) return Date.now() - startedAt;
    if (Date.now() - startedAt > timeoutMs)
      throw new Error(`${what}: not reached within ${timeoutMs} ms`);
    await sleep(intervalMs);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** How a request ended: `ok` or the error code, and when, in ms after `startedAt`. */
export interface Outcome {
  code: string;
  elapsedMs: number;
}

/**
 * Waits for `request` and returns its outcome. A RelayClientError gives its
 * code. Any other error gives `THROWN: <message>`, so that an assertion on
 * the code shows it.
 */
export async function outcomeOf(
  request: Promise<unknown>,
  startedAt = Date.now(),
): Promise<Outcome> {
  try {
    await request;
    return { code: "ok", elapsedMs: Date.now() - startedAt };
  } catch (error) {
    const code =
      error instanceof RelayClientError
        ? error.code
        : `THROWN: ${(error as Error).message}`;
    return { code, elapsedMs: Date.now() - startedAt };
  }
}

/** Returns the largest and the median of `values` (0 for none), rounded to ms. */
export function spread(values: number[]): { max: number; median: number } {
  if (values.length === 0) return { max: 0, median: 0 };
  const sorted = [...values].sort((a, b) => a - b);
  const median = sorted[Math.floor((sorted.length - 1) / 2)] ?? 0;
  return {
    max: Math.round(sorted[sorted.length - 1] ?? 0),
    median: Math.round(median),
  };
}

/**
 * Sends `GET /readyz` until each worker of `serverIds` has responded
 * at least once, and returns each worker's last status. Each request opens a
 * new connection, which the primary hands to the next worker round-robin.
 */
export async function readinessByWorker(
  url: string,
  serverIds: string[],
  attempts = 10 * serverIds.length,
): Promise<Map<string, number>> {
  const statuses = new Map<string, number>();
  for (let attempt = 0; attempt < attempts; attempt += 1) {
    const response = await send(`${url}/readyz`);
    if (response.servedBy !== undefined)
      statuses.set(response.servedBy, response.status);
    if (serverIds.every((serverId) => statuses.has(serverId))) break;
  }
  return statuses;
}

/** Polls `GET /readyz` until every worker of `serverIds` responds with `status`, and returns the time that took in ms. */
export function waitForReadiness(
  url: string,
  serverIds: string[],
  status: number,
  timeoutMs: number,
): Promise<number> {
  const last = new Map<string, number>();
  return waitUntil(
    `every worker answering ${status} on /readyz`,
    async () => {
      const response = await send(`${url}/readyz`);
      if (response.servedBy !== undefined)
        last.set(response.servedBy, response.status);
      return serverIds.every((serverId) => last.get(serverId) === status);
    },
    timeoutMs,
  );
}

/** Returns the primary's `relay_workers_ready` gauge from `GET /metrics`. */
export async function workersReadyGauge(url: string): Promise<number> {
  const response = await send(`${url}/metrics`);
  const match = /^relay_workers_ready (\d+)$/m.exec(response.text);
  if (match === null)
    throw new Error(
      `no relay_workers_ready in /metrics (status ${response.status})`,
    );
  return Number(match[1]);
}

/**
 * Returns true once process `pid` is gone or a zombie. A worker whose
 * primary died stays a zombie until some process reaps it. Reads /proc,
 * so Linux only.
 */
export function hasExited(pid: number): boolean {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    return /^State:\s+Z/m.test(status);
  } catch {
    return true;
  }
}

/** Returns true while a process with `pid` exists. */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** A private Redis and a relay that uses it. */
export interface RelayOnRedis {
  redis: RedisServer;
  relay: RelayProcess;
}

/**
 * Starts a private Redis, then a relay on it with `options`. Stops the
 * Redis again and rethrows when the relay fails to start.
 */
export async function startRelayOnRedis(
  options: Omit<RelayOptions, "redisUrl"> = {},
): Promise<RelayOnRedis> {
  const redis = await startRedisServer();
  try {
    const relay = await startRelay({ ...options, redisUrl: redis.url });
    return { redis, relay };
  } catch (error) {
    await redis.stop();
    throw error;
  }
}

/**
 * Stops `relay`, then `redis`. Either may be undefined, as it is in an
 * `after` hook when its `before` hook failed.
 */
export async function stopRelayOnRedis({
  relay,
  redis,
}: Partial<RelayOnRedis>): Promise<void> {
  await relay?.stop();
  await redis?.stop();
}

/** Starts a fake bridge on `url` for each of `bridgeIds`, all at once. */
export function startFakeBridges(
  url: string,
  bridgeIds: string[],
): Promise<FakeBridge[]> {
  return Promise.all(
    bridgeIds.map((bridgeId) => startFakeBridge({ url, bridgeId })),
  );
}

/** Returns, by bridge ID, the server ID of the worker each bridge is connected to. */
export async function workerOfEachBridge(
  bridges: FakeBridge[],
): Promise<Map<string, string>> {
  const ownerOf = new Map<string, string>();
  for (const bridge of bridges) {
    const { serverId } = await bridge.client.serverInfo();
    ownerOf.set(bridge.bridgeId, serverId);
  }
  return ownerOf;
}
