/**
 * Measures how the cost of a command changes with the number of server
 * processes (2 and 4 by default): Redis commands and server CPU time per
 * light command, and the 99th percentile at half the maximum sustained
 * rate. The relay routes each command to the one process that has the
 * bridge's connection, so its cost should stay flat; the bare Socket.IO baseline on the
 * Redis adapter asks every process, so its cost grows.
 */
import { startRedisServer } from "../../test/support/redis-server.ts";
import {
  integerListOption,
  integerOption,
  parseBenchArgs,
} from "../lib/cli.ts";
import {
  measureCommandStep,
  measureTarget,
  pairSpecs,
  stepRow,
  type CommandStep,
  type CommandTarget,
  type LadderSettings,
} from "../lib/command-steps.ts";
import {
  RedisStats,
  countsBetween,
  type CommandCounts,
} from "../lib/redis-stats.ts";
import { printTable } from "../lib/results.ts";
import { runScenario, type Cleanup } from "../lib/scenario.ts";
import {
  startBare,
  startBenchRelay,
  type ServerGroup,
} from "../lib/servers.ts";
import { ratio, round } from "../lib/stats.ts";
import { LoadAgent } from "../load/rpc.ts";

const USAGE = `Command cost against the number of server processes.

  npm run bench:command-scale -- [--processes 2,4] [--cost-rate 500] [--pairs 20] [--step-ms 5000] [--measure-ms 10000]

  --processes LIST  numbers of server processes to compare (default 2,4)
  --cost-rate N     commands per second of the run that measures cost, the same for all (default 500);
                    a second run scales it by the process count, for equal load per process
  --pairs N         bridge and app pairs that share the load (default 20)
  --step-ms MS      length of each step of the search for the maximum rate (default 5000)
  --measure-ms MS   length of the runs at the cost rate and at half the maximum rate (default 10000)
  --rates LIST      offered rates to climb, in commands per second`;

const P99_TARGET_MS = 100;

const values = parseBenchArgs(USAGE, {
  processes: { type: "string" },
  "cost-rate": { type: "string" },
  pairs: { type: "string" },
  "step-ms": { type: "string" },
  "measure-ms": { type: "string" },
  rates: { type: "string" },
});
const smoke = values.smoke;
const processCounts = integerListOption(
  values.processes ?? "2,4",
  "processes",
  2,
);
const costRate = integerOption(
  values["cost-rate"] ?? (smoke ? "40" : "500"),
  "cost-rate",
  1,
);
const pairs = integerOption(values.pairs ?? (smoke ? "4" : "20"), "pairs", 1);
const stepMs = integerOption(
  values["step-ms"] ?? (smoke ? "400" : "5000"),
  "step-ms",
  100,
);
const measureMs = integerOption(
  values["measure-ms"] ?? (smoke ? "300" : "10000"),
  "measure-ms",
  100,
);
const rates = integerListOption(
  values.rates ??
    (smoke ? "40" : "250,500,1000,1500,2000,3000,4000,6000,8000,12000,16000"),
  "rates",
  1,
);
const ladder: LadderSettings = {
  rates,
  refinements: smoke ? 0 : 2,
  stepMs,
  warmupMs: smoke ? 200 : 2000,
  settleMs: smoke ? 100 : 500,
  p99TargetMs: P99_TARGET_MS,
};
/** Length of the window that measures background Redis traffic (presence heartbeats), in ms. */
const idleMs = smoke ? 200 : 3000;

/** A fixed-rate run and the Redis commands it caused. */
interface FixedRateRun {
  step: CommandStep;
  /** Redis commands per light command, background traffic subtracted, calls inside Lua scripts included. */
  redisCommandsPerCommand: number;
  /** The same by Redis command name. */
  redisCommandsByName: Record<string, number>;
}

interface ScaleResult {
  system: "relay" | "bare-adapter";
  processes: number;
  maxSustainedRate: number;
  /** The run at the cost rate, the same for every system and process count. */
  cost: FixedRateRun;
  /**
   * The run at the cost rate scaled by the process count (the first count
   * runs at the cost rate itself), so that each process carries the same
   * load. CPU per command falls as a process's load rises, so only this
   * run compares process counts at equal load.
   */
  equalLoad: FixedRateRun;
  /** The run at half the maximum sustained rate. */
  halfRate: FixedRateRun;
  ladder: CommandStep[];
}

function perCommand(
  counts: CommandCounts,
  commands: number,
): Record<string, number> {
  return Object.fromEntries(
    Object.entries(counts).map(([name, calls]) => [
      name,
      round(calls / commands, 3),
    ]),
  );
}

/**
 * Runs commands at `rate` for the measuring time and counts the Redis
 * commands they caused, less the background traffic of an idle window.
 */
async function measureFixedRate(
  agent: LoadAgent,
  target: CommandTarget,
  redisStats: RedisStats,
  rate: number,
): Promise<FixedRateRun> {
  await agent.call("commands.setup", target.setup);
  await measureCommandStep(agent, target, rate, ladder.warmupMs, P99_TARGET_MS);
  const idleStart = await redisStats.commandCounts();
  await new Promise((resolve) => setTimeout(resolve, idleMs));
  const idle = countsBetween(idleStart, await redisStats.commandCounts());

  const before = await redisStats.commandCounts();
  const started = performance.now();
  const step = await measureCommandStep(
    agent,
    target,
    rate,
    measureMs,
    P99_TARGET_MS,
  );
  const elapsedMs = performance.now() - started;
  const during = countsBetween(before, await redisStats.commandCounts());
  await agent.call("commands.close");

  // Subtract the background traffic, scaled from the idle window to the run.
  const net: CommandCounts = {};
  for (const [name, calls] of Object.entries(during.byCommand)) {
    const background = ((idle.byCommand[name] ?? 0) * elapsedMs) / idleMs;
    net[name] = Math.max(0, calls - background);
  }
  const total = Object.values(net).reduce((sum, calls) => sum + calls, 0);
  const commands = Math.max(1, step.succeeded);
  return {
    step,
    redisCommandsPerCommand: round(total / commands, 3),
    redisCommandsByName: perCommand(net, commands),
  };
}

async function measureSystem(
  cleanup: Cleanup,
  agent: LoadAgent,
  redisStats: RedisStats,
  redisUrl: string,
  system: ScaleResult["system"],
  processes: number,
): Promise<ScaleResult> {
  let group: ServerGroup;
  let target: CommandTarget;
  const redisPid = await redisStats.pid();
  if (system === "relay") {
    const relay = cleanup.add(await startBenchRelay(redisUrl, processes), (g) =>
      g.stop(),
    );
    group = relay;
    target = {
      name: `relay-${processes}`,
      description: `relay, one instance of ${processes} workers, bridge and app on different workers`,
      setup: {
        kind: "relay",
        pairs: pairSpecs(pairs, relay.urls, relay.urls, "other"),
      },
      serverPids: () => relay.pids(),
      redisPid,
    };
  } else {
    const bare = cleanup.add(await startBare(processes, redisUrl), (g) =>
      g.stop(),
    );
    group = bare;
    const appUrls = bare.urls.map(
      (_, index) => bare.urls[(index + 1) % bare.urls.length]!,
    );
    target = {
      name: `bare-adapter-${processes}`,
      description: `bare Socket.IO, ${processes} processes on the Redis adapter, bridge and app on different ones`,
      setup: {
        kind: "bare",
        pairs: pairSpecs(pairs, bare.urls, appUrls, "any"),
      },
      serverPids: () => bare.pids(),
      redisPid,
    };
  }
  const cost = await measureFixedRate(agent, target, redisStats, costRate);
  const equalLoadRate = Math.round((costRate * processes) / processCounts[0]!);
  const equalLoad =
    equalLoadRate === costRate
      ? cost
      : await measureFixedRate(agent, target, redisStats, equalLoadRate);
  const search = await measureTarget(agent, target, ladder);
  const halfRate = await measureFixedRate(
    agent,
    target,
    redisStats,
    Math.max(1, Math.floor(search.maxSustainedRate / 2)),
  );
  await group.stop();
  return {
    system,
    processes,
    maxSustainedRate: search.maxSustainedRate,
    cost,
    equalLoad,
    halfRate,
    ladder: search.steps,
  };
}

/** Returns the 4-process figure over the 2-process one (or the last over the first). */
function growth(
  results: ScaleResult[],
  system: ScaleResult["system"],
  figure: (result: ScaleResult) => number,
): number | null {
  const rows = results.filter((result) => result.system === system);
  if (rows.length < 2) return null;
  return ratio(figure(rows[rows.length - 1]!), figure(rows[0]!));
}

await runScenario(
  {
    name: "command-scale",
    smoke,
    outDir: values.out,
    settings: {
      processCounts,
      costRate,
      pairs,
      stepMs,
      measureMs,
      rates,
      idleMs,
      p99TargetMs: P99_TARGET_MS,
    },
  },
  async (cleanup) => {
    const redis = cleanup.add(await startRedisServer(), (server) =>
      server.stop(),
    );
    const redisStats = cleanup.add(
      await RedisStats.connect(redis.url),
      (stats) => stats.close(),
    );
    const agent = cleanup.add(new LoadAgent("commands"), (load) => load.stop());
    const results: ScaleResult[] = [];
    for (const system of ["relay", "bare-adapter"] as const) {
      for (const processes of processCounts) {
        results.push(
          await measureSystem(
            cleanup,
            agent,
            redisStats,
            redis.url,
            system,
            processes,
          ),
        );
      }
    }
    printTable(
      "Search for the maximum sustained rate",
      results.flatMap((result) =>
        result.ladder.map((step) =>
          stepRow(`${result.system}-${result.processes}`, step),
        ),
      ),
    );
    printTable(
      `Cost at ${costRate} commands per second`,
      results.map((result) => ({
        system: result.system,
        processes: result.processes,
        "p50 ms": result.cost.step.p50Ms,
        "p99 ms": result.cost.step.p99Ms,
        "redis cmds/cmd": result.cost.redisCommandsPerCommand,
        "server cpu ms/cmd": result.cost.step.serverCpuMsPerCommand,
        "redis cpu ms/cmd": result.cost.step.redisCpuMsPerCommand,
      })),
    );
    printTable(
      `Cost at ${costRate} commands per second per ${processCounts[0]} processes (equal load per process)`,
      results.map((result) => ({
        system: result.system,
        processes: result.processes,
        "rate/s": result.equalLoad.step.rate,
        "p99 ms": result.equalLoad.step.p99Ms,
        "redis cmds/cmd": result.equalLoad.redisCommandsPerCommand,
        "server cpu ms/cmd": result.equalLoad.step.serverCpuMsPerCommand,
      })),
    );
    printTable(
      "At half the maximum sustained rate",
      results.map((result) => ({
        system: result.system,
        processes: result.processes,
        "max/s": result.maxSustainedRate,
        "rate/s": result.halfRate.step.rate,
        "p50 ms": result.halfRate.step.p50Ms,
        "p99 ms": result.halfRate.step.p99Ms,
        "p99 < 100 ms": result.halfRate.step.p99Ms < P99_TARGET_MS,
      })),
    );
    return {
      results,
      summary: {
        costRate,
        relayRedisCommandsGrowth: growth(
          results,
          "relay",
          (r) => r.cost.redisCommandsPerCommand,
        ),
        relayServerCpuGrowth: growth(
          results,
          "relay",
          (r) => r.cost.step.serverCpuMsPerCommand,
        ),
        bareRedisCommandsGrowth: growth(
          results,
          "bare-adapter",
          (r) => r.cost.redisCommandsPerCommand,
        ),
        bareServerCpuGrowth: growth(
          results,
          "bare-adapter",
          (r) => r.cost.step.serverCpuMsPerCommand,
        ),
        relayServerCpuGrowthAtEqualLoad: growth(
          results,
          "relay",
          (r) => r.equalLoad.step.serverCpuMsPerCommand,
        ),
        bareServerCpuGrowthAtEqualLoad: growth(
          results,
          "bare-adapter",
          (r) => r.equalLoad.step.serverCpuMsPerCommand,
        ),
      },
    };
  },
);
