/**
 * Compares the server CPU time per command round trip of the relay with
 * Mosquitto carrying the same request and reply over MQTT (QoS 0, Nagle's
 * algorithm off at both ends), at the same fixed rates. The bare Socket.IO
 * process is measured too, to separate Socket.IO's cost from the relay's.
 * Skips the broker with a printed reason when `mosquitto` is not on PATH.
 */
import { startRedisServer } from "../../test/support/redis-server.ts";
import {
  integerListOption,
  integerOption,
  parseBenchArgs,
} from "../lib/cli.ts";
import {
  measureCommandStep,
  pairSpecs,
  stepRow,
  type CommandStep,
  type CommandTarget,
} from "../lib/command-steps.ts";
import { RedisStats } from "../lib/redis-stats.ts";
import { printTable } from "../lib/results.ts";
import { runScenario, type Cleanup } from "../lib/scenario.ts";
import {
  mosquittoMissing,
  startBare,
  startBenchRelay,
  startMosquitto,
  type ServerGroup,
} from "../lib/servers.ts";
import { ratio } from "../lib/stats.ts";
import { LoadAgent } from "../load/rpc.ts";

const USAGE = `Server CPU per command round trip: the relay against Mosquitto.

  npm run bench:mqtt -- [--rates 500,1000,2000] [--pairs 20] [--step-ms 5000]

  --rates LIST   fixed rates to compare at, in round trips per second
  --pairs N      requester and responder pairs that share the load (default 20)
  --step-ms MS   length of each run in ms (default 5000)`;

const P99_TARGET_MS = 100;

const values = parseBenchArgs(USAGE, {
  rates: { type: "string" },
  pairs: { type: "string" },
  "step-ms": { type: "string" },
});
const smoke = values.smoke;
const rates = integerListOption(
  values.rates ?? (smoke ? "20" : "500,1000,2000"),
  "rates",
  1,
);
const pairs = integerOption(values.pairs ?? (smoke ? "2" : "20"), "pairs", 1);
const stepMs = integerOption(
  values["step-ms"] ?? (smoke ? "400" : "5000"),
  "step-ms",
  100,
);
const warmupMs = smoke ? 200 : 2000;

interface RateResult {
  target: string;
  description: string;
  steps: CommandStep[];
}

type Starter = (
  cleanup: Cleanup,
) => Promise<{ group: ServerGroup; target: CommandTarget }>;

async function measureAtRates(
  cleanup: Cleanup,
  agent: LoadAgent,
  start: Starter,
): Promise<RateResult> {
  const { group, target } = await start(cleanup);
  console.log(`\n${target.name}: ${target.description}`);
  await agent.call("commands.setup", target.setup);
  await measureCommandStep(agent, target, rates[0]!, warmupMs, P99_TARGET_MS);
  const steps: CommandStep[] = [];
  for (const rate of rates) {
    const step = await measureCommandStep(
      agent,
      target,
      rate,
      stepMs,
      P99_TARGET_MS,
    );
    console.log(
      `  ${rate}/s: p50 ${step.p50Ms} ms, p99 ${step.p99Ms} ms, server cpu ${step.serverCpuMsPerCommand} ms per round trip`,
    );
    steps.push(step);
  }
  await agent.call("commands.close");
  await group.stop();
  return { target: target.name, description: target.description, steps };
}

await runScenario(
  {
    name: "mqtt",
    smoke,
    outDir: values.out,
    settings: { rates, pairs, stepMs, p99TargetMs: P99_TARGET_MS },
  },
  async (cleanup) => {
    const skipped: string[] = [];
    const agent = cleanup.add(new LoadAgent("commands"), (load) => load.stop());
    const redis = cleanup.add(await startRedisServer(), (server) =>
      server.stop(),
    );
    const redisStats = cleanup.add(
      await RedisStats.connect(redis.url),
      (stats) => stats.close(),
    );
    const redisPid = await redisStats.pid();
    const starters: Starter[] = [];
    const missing = mosquittoMissing();
    if (missing === null) {
      starters.push(async (scope) => {
        const broker = scope.add(await startMosquitto(), (group) =>
          group.stop(),
        );
        return {
          group: broker,
          target: {
            name: "mosquitto",
            description:
              "Mosquitto, MQTT request and reply at QoS 0 through a responder",
            setup: {
              kind: "mqtt",
              pairs: pairSpecs(pairs, broker.urls, broker.urls, "any"),
            },
            serverPids: () => broker.pids(),
          },
        };
      });
    } else {
      console.log(`skipping the MQTT baseline: ${missing}`);
      skipped.push(missing);
    }
    starters.push(
      async (scope) => {
        const relay = scope.add(await startBenchRelay(undefined), (group) =>
          group.stop(),
        );
        return {
          group: relay,
          target: {
            name: "relay-embedded",
            description: "relay, embedded mode (one process, state in memory)",
            setup: {
              kind: "relay",
              pairs: pairSpecs(pairs, relay.urls, relay.urls, "any"),
            },
            serverPids: () => relay.pids(),
          },
        };
      },
      async (scope) => {
        const relay = scope.add(await startBenchRelay(redis.url, 2), (group) =>
          group.stop(),
        );
        return {
          group: relay,
          target: {
            name: "relay-same-worker",
            description:
              "relay, 2 workers and Redis, bridge and app on the same worker",
            setup: {
              kind: "relay",
              pairs: pairSpecs(pairs, relay.urls, relay.urls, "same"),
            },
            serverPids: () => relay.pids(),
            redisPid,
          },
        };
      },
      async (scope) => {
        const bare = scope.add(await startBare(1), (group) => group.stop());
        return {
          group: bare,
          target: {
            name: "bare-1-process",
            description: "bare Socket.IO, one process",
            setup: {
              kind: "bare",
              pairs: pairSpecs(pairs, bare.urls, bare.urls, "any"),
            },
            serverPids: () => bare.pids(),
          },
        };
      },
    );
    const results: RateResult[] = [];
    for (const start of starters)
      results.push(await measureAtRates(cleanup, agent, start));

    printTable(
      "Round trips at fixed rates",
      results.flatMap((result) =>
        result.steps.map((step) => stepRow(result.target, step)),
      ),
    );
    const mosquitto = results.find((result) => result.target === "mosquitto");
    const cpuRatios: Record<string, Record<string, number | null>> = {};
    for (const result of results) {
      if (result === mosquitto || mosquitto === undefined) continue;
      cpuRatios[result.target] = Object.fromEntries(
        result.steps.map((step, index) => [
          String(step.rate),
          ratio(
            step.serverCpuMsPerCommand,
            mosquitto.steps[index]!.serverCpuMsPerCommand,
            1,
          ),
        ]),
      );
    }
    if (mosquitto !== undefined) {
      printTable(
        "Server CPU per round trip, as a multiple of Mosquitto's",
        Object.entries(cpuRatios).map(([target, byRate]) => ({
          target,
          ...Object.fromEntries(
            Object.entries(byRate).map(([rate, value]) => [
              `at ${rate}/s`,
              value,
            ]),
          ),
        })),
      );
    }
    return { results, summary: { serverCpuVsMosquitto: cpuRatios }, skipped };
  },
);
