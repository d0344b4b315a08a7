/**
 * Measures how many state-change deliveries per second the servers
 * sustain with a 99th percentile delivery latency under 50 ms, when one
 * bridge's changes fan out to many subscribed dashboards (1,000 by
 * default). It compares the relay on 2 workers with bare Socket.IO in one
 * process and in two processes on the Redis adapter. Latency runs from a change's scheduled
 * time in the bridge's process to its arrival in a dashboard's process.
 */
import { startRedisServer } from "../../test/support/redis-server.ts";
import {
  integerListOption,
  integerOption,
  parseBenchArgs,
} from "../lib/cli.ts";
import { findMaxSustainedRate, type Step } from "../lib/ladder.ts";
import { CpuWindow } from "../lib/proc.ts";
import { RedisStats } from "../lib/redis-stats.ts";
import { printTable } from "../lib/results.ts";
import { runScenario, type Cleanup } from "../lib/scenario.ts";
import {
  startBare,
  startBenchRelay,
  type ServerGroup,
} from "../lib/servers.ts";
import { ratio, round, summarizeLatencies } from "../lib/stats.ts";
import { randomBridgeId, type ServerKind } from "../load/clients.ts";
import type { OpenLoopStats } from "../load/open-loop.ts";
import { LoadAgent } from "../load/rpc.ts";

const USAGE = `State changes fanned out to many dashboards: deliveries per second with p99 < 50 ms.

  npm run bench:fanout -- [--dashboards 1000] [--agents 2] [--step-ms 5000] [--rates 5,10,...]

  --dashboards N   apps subscribed to the bridge (default 1000)
  --agents N       load generator processes that share the dashboards (default 2)
  --step-ms MS     length of each fixed-rate step in ms (default 5000)
  --rates LIST     state changes per second to climb; deliveries are this times the dashboards`;

const P99_TARGET_MS = 50;

const values = parseBenchArgs(USAGE, {
  dashboards: { type: "string" },
  agents: { type: "string" },
  "step-ms": { type: "string" },
  rates: { type: "string" },
});
const smoke = values.smoke;
const dashboards = integerOption(
  values.dashboards ?? (smoke ? "10" : "1000"),
  "dashboards",
  1,
);
const agentCount = integerOption(values.agents ?? "2", "agents", 1);
const stepMs = integerOption(
  values["step-ms"] ?? (smoke ? "400" : "5000"),
  "step-ms",
  100,
);
const rates = integerListOption(
  values.rates ?? (smoke ? "4" : "5,10,20,30,40,60,80,120,160,240,320"),
  "rates",
  1,
);
/** Wait for the last deliveries of a step after its last change was acknowledged, in ms. */
const deliveryDrainMs = smoke ? 300 : 1000;

interface FanoutStep extends Step {
  changes: number;
  changeErrors: number;
  expectedDeliveries: number;
  deliveries: number;
  deliveriesPerSecond: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
  /** CPU time of the server processes per delivery, in µs. */
  serverCpuUsPerDelivery: number;
  redisCpuUsPerDelivery: number | null;
  /** Share of one core used by the busiest dashboard agent: near 1, it may be the limit. */
  maxAgentCores: number;
}

interface FanoutResult {
  target: string;
  description: string;
  dashboards: number;
  maxSustainedChangesPerSecond: number;
  maxSustainedDeliveriesPerSecond: number;
  steps: FanoutStep[];
}

interface FanoutTarget {
  name: string;
  description: string;
  kind: ServerKind;
  group: ServerGroup;
  bridgeUrl: string;
  dashboardUrls: string[];
  redisPid?: number;
}

async function measureStep(
  target: FanoutTarget,
  source: LoadAgent,
  receivers: LoadAgent[],
  rate: number,
  durationMs: number,
): Promise<FanoutStep> {
  // Late deliveries of the previous step are dropped here.
  await Promise.all(receivers.map((agent) => agent.call("dashboards.collect")));
  const server = new CpuWindow(target.group.pids());
  const redis =
    target.redisPid === undefined
      ? undefined
      : new CpuWindow([target.redisPid]);
  const agentWindows = receivers.map((agent) => new CpuWindow([agent.pid]));
  const stats = await source.call<OpenLoopStats>("changes.run", {
    rate,
    durationMs,
    drainMs: 3000,
  });
  await new Promise((resolve) => setTimeout(resolve, deliveryDrainMs));
  const collected = await Promise.all(
    receivers.map((agent) =>
      agent.call<{ latencies: number[] }>("dashboards.collect"),
    ),
  );
  const serverCpu = server.read();
  const redisCpu = redis?.read();
  const latencies = collected.flatMap((part) => part.latencies);
  const latency = summarizeLatencies(latencies);
  const changeErrors =
    Object.values(stats.errors).reduce((sum, count) => sum + count, 0) +
    stats.unfinished;
  const expected = stats.succeeded * dashboards;
  const perDelivery = (cpuMs: number): number =>
    latencies.length === 0 ? 0 : round((cpuMs * 1000) / latencies.length, 3);
  return {
    rate,
    sustained:
      changeErrors === 0 &&
      latencies.length === expected &&
      latency.p99Ms < P99_TARGET_MS,
    changes: stats.succeeded,
    changeErrors,
    expectedDeliveries: expected,
    deliveries: latencies.length,
    // Deliveries per second of the schedule, so a rounded change count does not skew it.
    deliveriesPerSecond: Math.round(
      (latencies.length / stats.scheduled) * rate,
    ),
    p50Ms: latency.p50Ms,
    p90Ms: latency.p90Ms,
    p99Ms: latency.p99Ms,
    maxMs: latency.maxMs,
    serverCpuUsPerDelivery: perDelivery(serverCpu.cpuMs),
    redisCpuUsPerDelivery:
      redisCpu === undefined ? null : perDelivery(redisCpu.cpuMs),
    maxAgentCores: Math.max(
      ...agentWindows.map((window) => round(window.read().coreShare)),
    ),
  };
}

/** The load agents of the scenario: one for the bridge, the rest for the dashboards. */
interface Agents {
  source: LoadAgent;
  receivers: LoadAgent[];
}

async function measureTarget(
  target: FanoutTarget,
  { source, receivers }: Agents,
): Promise<FanoutResult> {
  console.log(`\n${target.name}: ${target.description}`);
  const bridgeId = randomBridgeId();
  try {
    await source.call("changes.connect", {
      kind: target.kind,
      url: target.bridgeUrl,
      bridgeId,
    });
    const shares = receivers.map(
      (_, index) =>
        Math.floor(dashboards / agentCount) +
        (index < dashboards % agentCount ? 1 : 0),
    );
    await Promise.all(
      receivers.map((agent, index) =>
        agent.call("dashboards.connect", {
          kind: target.kind,
          urls: target.dashboardUrls,
          bridgeId,
          count: shares[index],
          concurrency: 50,
        }),
      ),
    );
    await measureStep(target, source, receivers, rates[0]!, smoke ? 200 : 2000);
    const ladder = await findMaxSustainedRate<FanoutStep>({
      rates,
      refinements: smoke ? 0 : 2,
      settleMs: smoke ? 100 : 1000,
      runStep: async (rate) => {
        const step = await measureStep(target, source, receivers, rate, stepMs);
        console.log(
          `  ${rate} changes/s: ${step.deliveriesPerSecond} deliveries/s, p50 ${step.p50Ms} ms, p99 ${step.p99Ms} ms, ${step.deliveries}/${step.expectedDeliveries} delivered, ${step.sustained ? "sustained" : "not sustained"}`,
        );
        return step;
      },
    });
    return {
      target: target.name,
      description: target.description,
      dashboards,
      maxSustainedChangesPerSecond: ladder.maxSustainedRate,
      maxSustainedDeliveriesPerSecond: ladder.maxSustainedRate * dashboards,
      steps: ladder.steps,
    };
  } finally {
    // The agents stay up for the next target; only their clients close.
    await Promise.all([
      source.call("changes.close"),
      ...receivers.map((agent) => agent.call("dashboards.close")),
    ]);
  }
}

async function withGroup<T>(
  cleanup: Cleanup,
  group: ServerGroup,
  body: (group: ServerGroup) => Promise<T>,
): Promise<T> {
  cleanup.add(group, (started) => started.stop());
  try {
    return await body(group);
  } finally {
    await group.stop();
  }
}

await runScenario(
  {
    name: "fanout",
    smoke,
    outDir: values.out,
    settings: {
      dashboards,
      agents: agentCount,
      stepMs,
      rates,
      deliveryDrainMs,
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
    const redisPid = await redisStats.pid();
    const agents: Agents = {
      source: cleanup.add(new LoadAgent("bridge"), (agent) => agent.stop()),
      receivers: Array.from({ length: agentCount }, (_, index) =>
        cleanup.add(new LoadAgent(`dashboards-${index}`), (agent) =>
          agent.stop(),
        ),
      ),
    };
    const results: FanoutResult[] = [];
    results.push(
      await withGroup(cleanup, await startBenchRelay(redis.url, 2), (relay) =>
        measureTarget(
          {
            name: "relay-2-workers",
            description:
              "relay, 2 workers and Redis, dashboards spread over both workers",
            kind: "relay",
            group: relay,
            bridgeUrl: relay.urls[0]!,
            dashboardUrls: relay.urls,
            redisPid,
          },
          agents,
        ),
      ),
    );
    results.push(
      await withGroup(cleanup, await startBare(1), (bare) =>
        measureTarget(
          {
            name: "bare-1-process",
            description: "bare Socket.IO, one process",
            kind: "bare",
            group: bare,
            bridgeUrl: bare.urls[0]!,
            dashboardUrls: bare.urls,
          },
          agents,
        ),
      ),
    );
    results.push(
      await withGroup(cleanup, await startBare(2, redis.url), (bare) =>
        measureTarget(
          {
            name: "bare-adapter-2-processes",
            description:
              "bare Socket.IO, 2 processes on the Redis adapter, dashboards spread over both",
            kind: "bare",
            group: bare,
            bridgeUrl: bare.urls[0]!,
            dashboardUrls: bare.urls,
            redisPid,
          },
          agents,
        ),
      ),
    );
    printTable(
      "Steps",
      results.flatMap((result) =>
        result.steps.map((step) => ({
          target: result.target,
          "changes/s": step.rate,
          ok: step.sustained,
          "deliveries/s": step.deliveriesPerSecond,
          delivered: `${step.deliveries}/${step.expectedDeliveries}`,
          "p50 ms": step.p50Ms,
          "p99 ms": step.p99Ms,
          "max ms": step.maxMs,
          "server cpu us/delivery": step.serverCpuUsPerDelivery,
          "agent cores": step.maxAgentCores,
        })),
      ),
    );
    const bareOne = results.find(
      (result) => result.target === "bare-1-process",
    );
    const bareAdapter = results.find(
      (result) => result.target === "bare-adapter-2-processes",
    );
    printTable(
      `Maximum sustained deliveries per second with p99 < ${P99_TARGET_MS} ms`,
      results.map((result) => ({
        target: result.target,
        "deliveries/s": result.maxSustainedDeliveriesPerSecond,
        "vs bare-1-process": ratio(
          result.maxSustainedDeliveriesPerSecond,
          bareOne?.maxSustainedDeliveriesPerSecond ?? 0,
        ),
        "vs bare-adapter": ratio(
          result.maxSustainedDeliveriesPerSecond,
          bareAdapter?.maxSustainedDeliveriesPerSecond ?? 0,
        ),
      })),
    );
    return {
      results,
      summary: {
        maxSustainedDeliveriesPerSecond: Object.fromEntries(
          results.map((result) => [
            result.target,
            result.maxSustainedDeliveriesPerSecond,
          ]),
        ),
        relayVsBare: ratio(
          results[0]!.maxSustainedDeliveriesPerSecond,
          bareOne?.maxSustainedDeliveriesPerSecond ?? 0,
        ),
        relayVsBareAdapter: ratio(
          results[0]!.maxSustainedDeliveriesPerSecond,
          bareAdapter?.maxSustainedDeliveriesPerSecond ?? 0,
        ),
      },
    };
  },
);
