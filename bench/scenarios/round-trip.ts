/**
 * Measures the command round trip (app -> relay -> bridge -> relay -> app)
 * with the bridge and the app on the same worker, on different workers of
 * one instance, and on two instances sharing Redis, plus the embedded mode.
 * Commands are sent one at a time, so the figures are latency, not load,
 * and the clients run in this process.
 *
 *   npm run bench:round-trip -- [--commands 1000]
 */
import type { Socket } from "socket.io-client";
import type { LightSetCommand } from "../../client-sdk/src/protocol.ts";
import {
  connectApp,
  connectBridge,
  randomBridgeId,
  requestData,
} from "../../test/support/clients.ts";
import { light } from "../../test/support/fixtures.ts";
import { startRedisServer } from "../../test/support/redis-server.ts";
import { integerOption, parseBenchArgs } from "../lib/cli.ts";
import { printTable } from "../lib/results.ts";
import { runScenario } from "../lib/scenario.ts";
import { startBenchRelay } from "../lib/servers.ts";
import { summarizeLatencies } from "../lib/stats.ts";

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

const USAGE = `Command round trip, one command at a time, by placement.

  npm run bench:round-trip -- [--commands 1000]

  --commands N   timed commands per placement, after the warm-up (default 1000)`;

const values = parseBenchArgs(USAGE, { commands: { type: "string" } });
const COMMANDS = integerOption(
  values.commands ?? (values.smoke ? "20" : "1000"),
  "commands",
  10,
);
/** Commands per placement that warm up the JIT and connections and are not timed. */
const WARMUP_COMMANDS = values.smoke ? 5 : 50;

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
  for (let index = 0; index < COMMANDS + WARMUP_COMMANDS; index += 1) {
    const started = process.hrtime.bigint();
    await requestData(app, "light:set", {
      bridgeId,
      lightId: "a",
      change: { dimming: { brightness: index % 101 } },
    });
    if (index >= WARMUP_COMMANDS)
      timings.push(Number(process.hrtime.bigint() - started) / 1e6);
  }
  bridge.close();
  app.close();
  const { count: _count, ...latency } = summarizeLatencies(timings);
  return { placement: placement.name, commands: COMMANDS, ...latency };
}

await runScenario(
  {
    name: "round-trip",
    smoke: values.smoke,
    outDir: values.out,
    settings: { commands: COMMANDS, warmupCommands: WARMUP_COMMANDS },
  },
  async (cleanup) => {
    const redis = cleanup.add(await startRedisServer(), (server) =>
      server.stop(),
    );
    const [embedded, one, two] = await Promise.all([
      startBenchRelay(undefined),
      startBenchRelay(redis.url, 2),
      startBenchRelay(redis.url, 2),
    ]);
    for (const relay of [embedded, one, two]) {
      cleanup.add(relay, (started) => started.stop());
    }
    const placements: Placement[] = [
      {
        name: "embedded (one process)",
        bridgeUrl: embedded.urls[0]!,
        appUrl: embedded.urls[0]!,
        sameWorker: null,
      },
      {
        name: "redis, same worker",
        bridgeUrl: one.urls[0]!,
        appUrl: one.urls[0]!,
        sameWorker: true,
      },
      {
        name: "redis, other worker",
        bridgeUrl: one.urls[0]!,
        appUrl: one.urls[0]!,
        sameWorker: false,
      },
      {
        name: "redis, other instance",
        bridgeUrl: one.urls[0]!,
        appUrl: two.urls[0]!,
        sameWorker: false,
      },
    ];
    const results: Result[] = [];
    for (const placement of placements) results.push(await measure(placement));
    printTable(
      "Round trip, one command at a time",
      results.map((result) => ({
        placement: result.placement,
        commands: result.commands,
        "p50 ms": result.p50Ms,
        "p90 ms": result.p90Ms,
        "p99 ms": result.p99Ms,
        "max ms": result.maxMs,
      })),
    );
    return {
      results,
      summary: Object.fromEntries(
        results.map((result) => [result.placement, result.p50Ms]),
      ),
    };
  },
);
