/**
 * Measures the command round trip (app -> relay -> bridge -> relay -> app)
 * with the bridge and the app on the same worker, on different workers of
 * one instance, and on two instances sharing Redis, plus the embedded mode.
 * Commands are sent one at a time, so the figures are latency, not load.
 *
 *   npm run bench:round-trip -- [--commands 1000]
 */
import { mkdirSync, writeFileSync } from "node:fs";
import os from "node:os";
import { parseArgs } from "node:util";
import type { Socket } from "socket.io-client";
import type { LightSetCommand } from "../client-sdk/src/protocol.ts";
import {
  connectApp,
  connectBridge,
  randomBridgeId,
  requestData,
} from "../test/support/clients.ts";
import { light } from "../test/support/fixtures.ts";
import { startRedisServer } from "../test/support/redis-server.ts";
import {
  startRelay,
  type RelayProcess,
} from "../test/support/relay-process.ts";

interface Placement {
  name: string;
  bridgeUrl: string;
  appUrl: string;
  /** True when the app must land on the bridge's worker, false when on another, null when either. */
  sameWorker: boolean | null;
}

interface Result {
  placement: string;
  commands: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
}

const { values } = parseArgs({
  options: { commands: { type: "string", default: "1000" } },
});
const COMMANDS = Number(values.commands);
if (!Number.isInteger(COMMANDS) || COMMANDS < 10) {
  console.error("--commands must be a whole number of at least 10");
  process.exit(2);
}

function percentile(sorted: number[], fraction: number): number {
  const index = Math.min(
    sorted.length - 1,
    Math.ceil(fraction * sorted.length) - 1,
  );
  return Number(sorted[Math.max(0, index)]!.toFixed(2));
}

async function serverOf(socket: Socket): Promise<string> {
  return (await requestData<{ serverId: string }>(socket, "relay:info", {}))
    .serverId;
}

/** Connects an app until its worker matches the placement (round-robin makes this quick). */
async function placeApp(
  placement: Placement,
  bridgeId: string,
  bridgeServer: string,
): Promise<Socket> {
  for (let attempt = 0; attempt < 10; attempt += 1) {
    const app = await connectApp(placement.appUrl, [bridgeId], "read control", {
      transports: ["websocket"],
    });
    const same = (await serverOf(app)) === bridgeServer;
    if (placement.sameWorker === null || placement.sameWorker === same)
      return app;
    app.close();
  }
  throw new Error(`could not place the app for ${placement.name}`);
}

async function measure(placement: Placement): Promise<Result> {
  const bridgeId = randomBridgeId();
  const bridge = await connectBridge(placement.bridgeUrl, bridgeId);
  await requestData(bridge, "state:snapshot", { lights: [light("a")] });
  bridge.on(
    "light:set",
    (command: LightSetCommand, ack: (answer: unknown) => void) => {
      ack({ ok: true, data: { light: { ...light("a"), ...command.change } } });
    },
  );
  const app = await placeApp(placement, bridgeId, await serverOf(bridge));
  const timings: number[] = [];
  for (let index = 0; index < COMMANDS + 50; index += 1) {
    const started = process.hrtime.bigint();
    await requestData(app, "light:set", {
      bridgeId,
      lightId: "a",
      change: { dimming: { brightness: index % 101 } },
    });
    // The first 50 commands warm up the JIT and connections and are not counted.
    if (index >= 50)
      timings.push(Number(process.hrtime.bigint() - started) / 1e6);
  }
  bridge.close();
  app.close();
  timings.sort((a, b) => a - b);
  return {
    placement: placement.name,
    commands: COMMANDS,
    p50Ms: percentile(timings, 0.5),
    p90Ms: percentile(timings, 0.9),
    p99Ms: percentile(timings, 0.99),
    maxMs: percentile(timings, 1),
  };
}

/** The per-socket request limit would stop a single benchmark socket. */
const BENCH_ENV = { REQUESTS_PER_SOCKET_PER_10S: "100000000" };

async function main(): Promise<void> {
  const redis = await startRedisServer();
  const started: RelayProcess[] = [];
  try {
    const embedded = await startRelay({ env: BENCH_ENV });
    started.push(embedded);
    const one = await startRelay({
      redisUrl: redis.url,
      workers: 2,
      env: BENCH_ENV,
    });
    started.push(one);
    const two = await startRelay({
      redisUrl: redis.url,
      workers: 2,
      env: BENCH_ENV,
    });
    started.push(two);
    const placements: Placement[] = [
      {
        name: "embedded (one process)",
        bridgeUrl: embedded.url,
        appUrl: embedded.url,
        sameWorker: null,
      },
      {
        name: "redis, same worker",
        bridgeUrl: one.url,
        appUrl: one.url,
        sameWorker: true,
      },
      {
        name: "redis, other worker",
        bridgeUrl: one.url,
        appUrl: one.url,
        sameWorker: false,
      },
      {
        name: "redis, other instance",
        bridgeUrl: one.url,
        appUrl: two.url,
        sameWorker: false,
      },
    ];
    const results: Result[] = [];
    for (const placement of placements) results.push(await measure(placement));
    console.table(results);
    const machine = {
      cpus: os.cpus()[0]?.model,
      cores: os.availableParallelism(),
      node: process.version,
    };
    console.log(machine);
    mkdirSync("bench/results", { recursive: true });
    const file = `bench/results/round-trip-${new Date().toISOString().replace(/[:.]/g, "-")}.json`;
    writeFileSync(file, JSON.stringify({ machine, results }, null, 2));
    console.log(`wrote ${file}`);
  } finally {
    await Promise.all(started.map((relay) => relay.stop()));
    await redis.stop();
  }
}

await main();
