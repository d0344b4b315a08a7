/**
 * Finds the maximum sustained rate of light commands (app -> server ->
 * bridge -> server -> app) with a 99th percentile under 100 ms, and the
 * server CPU time per command, for the relay with the bridge and the app
 * on the same worker, on different workers and on different instances,
 * and for the bare Socket.IO baseline in one process and in two processes
 * on the Redis adapter.
 */
import { startRedisServer } from "../../test/support/redis-server.ts";
import {
  integerListOption,
  integerOption,
  parseBenchArgs,
} from "../lib/cli.ts";
import {
  measureTarget,
  pairSpecs,
  stepRow,
  type CommandTarget,
  type LadderSettings,
  type TargetResult,
} from "../lib/command-steps.ts";
import { RedisStats } from "../lib/redis-stats.ts";
import { printTable } from "../lib/results.ts";
import { runScenario } from "../lib/scenario.ts";
import { startBare, startBenchRelay } from "../lib/servers.ts";
import { ratio } from "../lib/stats.ts";
import { LoadAgent } from "../load/rpc.ts";

const USAGE = `Maximum sustained command rate (p99 < 100 ms) and server CPU per command.

  npm run bench:command-rate -- [--pairs 20] [--step-ms 5000] [--rates 250,500,...] [--refinements 2]

  --pairs N        bridge and app pairs that share the load (default 20)
  --step-ms MS     length of each fixed-rate step in ms (default 5000)
  --rates LIST     offered rates to climb, in commands per second
  --refinements N  bisections between the last passed and first failed rate (default 2)`;

const P99_TARGET_MS = 100;

const values = parseBenchArgs(USAGE, {
  pairs: { type: "string" },
  "step-ms": { type: "string" },
  rates: { type: "string" },
  refinements: { type: "string" },
});
const smoke = values.smoke;
const pairs = integerOption(values.pairs ?? (smoke ? "2" : "20"), "pairs", 1);
const stepMs = integerOption(
  values["step-ms"] ?? (smoke ? "400" : "5000"),
  "step-ms",
  100,
);
const rates = integerListOption(
  values.rates ??
    (smoke
      ? "40"
      : "250,500,1000,1500,2000,3000,4000,6000,8000,12000,16000,24000,32000,48000"),
  "rates",
  1,
);
const refinements = integerOption(
  values.refinements ?? (smoke ? "0" : "2"),
  "refinements",
  0,
);
const ladder: LadderSettings = {
  rates,
  refinements,
  stepMs,
  warmupMs: smoke ? 200 : 2000,
  settleMs: smoke ? 100 : 500,
  p99TargetMs: P99_TARGET_MS,
};

/** Returns the highest offered rate that every target sustained, or null. */
function commonRate(results: TargetResult[]): number | null {
  const candidates = rates.filter((rate) =>
    results.every((result) =>
      result.steps.some((step) => step.rate === rate && step.sustained),
    ),
  );
  return candidates.length === 0 ? null : Math.max(...candidates);
}

function cpuAt(
  result: TargetResult | undefined,
  rate: number | null,
): number | null {
  const step = result?.steps.find((candidate) => candidate.rate === rate);
  return step === undefined ? null : step.serverCpuMsPerCommand;
}

await runScenario(
  {
    name: "command-rate",
    smoke,
    outDir: values.out,
    settings: { pairs, stepMs, rates, refinements, p99TargetMs: P99_TARGET_MS },
  },
  async (cleanup) => {
    const redis = cleanup.add(await startRedisServer(), (server) =>
      server.stop(),
    );
    const redisStats = cleanup.add(
      await RedisStats.connect(redis.url),
      (stats) => stats.close(),
    );
    const redisPid = await redisStats.pid();
    const agent = cleanup.add(new LoadAgent("commands"), (load) => load.stop());
    const results: TargetResult[] = [];

    const [one, two] = await Promise.all([
      startBenchRelay(redis.url, 2),
      startBenchRelay(redis.url, 2),
    ]);
    cleanup.add(one, (relay) => relay.stop());
    cleanup.add(two, (relay) => relay.stop());
    const relayTargets: CommandTarget[] = [
      {
        name: "relay-same-worker",
        description: "relay, 2 workers, bridge and app on the same worker",
        setup: {
          kind: "relay",
          pairs: pairSpecs(pairs, one.urls, one.urls, "same"),
        },
        serverPids: () => one.pids(),
        redisPid,
      },
      {
        name: "relay-other-worker",
        description: "relay, 2 workers, bridge and app on different workers",
        setup: {
          kind: "relay",
          pairs: pairSpecs(pairs, one.urls, one.urls, "other"),
        },
        serverPids: () => one.pids(),
        redisPid,
      },
      {
        name: "relay-other-instance",
        description:
          "two relay instances of 2 workers, bridge on one and app on the other",
        setup: {
          kind: "relay",
          pairs: pairSpecs(pairs, one.urls, two.urls, "any"),
        },
        serverPids: () => [...one.pids(), ...two.pids()],
        redisPid,
      },
    ];
    for (const target of relayTargets)
      results.push(await measureTarget(agent, target, ladder));
    await Promise.all([one.stop(), two.stop()]);

    const bare = cleanup.add(await startBare(1), (group) => group.stop());
    results.push(
      await measureTarget(
        agent,
        {
          name: "bare-1-process",
          description: "bare Socket.IO, one process",
          setup: {
            kind: "bare",
            pairs: pairSpecs(pairs, bare.urls, bare.urls, "any"),
          },
          serverPids: () => bare.pids(),
        },
        ladder,
      ),
    );
    await bare.stop();

    const adapter = cleanup.add(await startBare(2, redis.url), (group) =>
      group.stop(),
    );
    const [first, second] = adapter.urls as [string, string];
    results.push(
      await measureTarget(
        agent,
        {
          name: "bare-adapter-other-process",
          description:
            "bare Socket.IO, 2 processes on the Redis adapter, bridge and app on different ones",
          setup: {
            kind: "bare",
            pairs: pairSpecs(pairs, [first, second], [second, first], "any"),
          },
          serverPids: () => adapter.pids(),
          redisPid,
        },
        ladder,
      ),
    );
    await adapter.stop();

    printTable(
      "Steps",
      results.flatMap((result) =>
        result.steps.map((step) => stepRow(result.target, step)),
      ),
    );
    const rate = commonRate(results);
    const byName = (name: string) =>
      results.find((result) => result.target === name);
    const sameWorker = byName("relay-same-worker");
    const bareOne = byName("bare-1-process");
    const summaryRows = results.map((result) => ({
      target: result.target,
      "max sustained/s": result.maxSustainedRate,
      "vs relay-same-worker": ratio(
        result.maxSustainedRate,
        sameWorker?.maxSustainedRate ?? 0,
      ),
      "vs bare-1-process": ratio(
        result.maxSustainedRate,
        bareOne?.maxSustainedRate ?? 0,
      ),
      [`server cpu ms/cmd at ${rate ?? "-"}/s`]: cpuAt(result, rate),
    }));
    printTable("Maximum sustained rate with p99 < 100 ms", summaryRows);
    const cpu = (name: string) => cpuAt(byName(name), rate);
    const cpuRatio = (a: string, b: string) => {
      const numerator = cpu(a);
      const denominator = cpu(b);
      return numerator === null || denominator === null
        ? null
        : ratio(numerator, denominator);
    };
    return {
      results,
      summary: {
        maxSustainedRate: Object.fromEntries(
          results.map((result) => [result.target, result.maxSustainedRate]),
        ),
        commonRate: rate,
        serverCpuMsPerCommandAtCommonRate: Object.fromEntries(
          results.map((result) => [result.target, cpuAt(result, rate)]),
        ),
        relaySameWorkerVsBareRate: ratio(
          sameWorker?.maxSustainedRate ?? 0,
          bareOne?.maxSustainedRate ?? 0,
        ),
        relaySameWorkerVsBareCpu: cpuRatio(
          "relay-same-worker",
          "bare-1-process",
        ),
        otherWorkerVsSameWorkerRate: ratio(
          byName("relay-other-worker")?.maxSustainedRate ?? 0,
          sameWorker?.maxSustainedRate ?? 0,
        ),
        otherInstanceVsSameWorkerRate: ratio(
          byName("relay-other-instance")?.maxSustainedRate ?? 0,
          sameWorker?.maxSustainedRate ?? 0,
        ),
        bareAdapterVsBareRate: ratio(
          byName("bare-adapter-other-process")?.maxSustainedRate ?? 0,
          bareOne?.maxSustainedRate ?? 0,
        ),
      },
    };
  },
);
