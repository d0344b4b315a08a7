/**
 * Measures server memory per idle bridge connection. Bridges connect in
 * steps (1,000 to 30,000 by default), and each sends one snapshot of two
 * lights and then stays idle. After each step, the scenario reads the
 * resident set size (RSS) of the serving processes. After the last step,
 * it keeps reading it while the bridges idle. V8 keeps freed heap space
 * until its memory reducer gives it back, a minute or so into an idle
 * period, so one reading can be several KiB per bridge above or below
 * what the process settles at. So at the end it also reads each process's
 * heap in use after a full collection (bench/lib/heap-probe.mjs), which
 * counts only what the connections keep. It compares the relay on
 * 2 workers with bare Socket.IO on 2 processes sharing the Redis adapter,
 * and reports Redis's own memory apart for both.
 */
import { startRedisServer } from "../../test/support/redis-server.ts";
import {
  integerListOption,
  integerOption,
  parseBenchArgs,
} from "../lib/cli.ts";
import { HeapProbe } from "../lib/heap-probe.ts";
import { totalResidentBytes } from "../lib/proc.ts";
import { RedisStats } from "../lib/redis-stats.ts";
import { printTable } from "../lib/results.ts";
import { runScenario, type Cleanup } from "../lib/scenario.ts";
import { startBare, startBenchRelay } from "../lib/servers.ts";
import { ratio, round } from "../lib/stats.ts";
import type { ServerKind } from "../load/clients.ts";
import type { FleetConnectResult } from "../load/fleet.ts";
import { LoadAgent } from "../load/rpc.ts";

const USAGE = `Server memory per idle bridge connection, against the number of bridges.

  npm run bench:idle-memory -- [--bridges 1000,2000,5000,10000,20000,30000] [--agents 3] [--settle-ms 3000]

  --bridges LIST   connected bridges at each step, ascending
  --agents N       load generator processes that share the bridges (default 3)
  --settle-ms MS   wait after each step before memory is read, in ms (default 3000)
  --idle-ms MS     after the last step, read memory every 10 s for this long, in ms (default 120000)`;

const values = parseBenchArgs(USAGE, {
  bridges: { type: "string" },
  agents: { type: "string" },
  "settle-ms": { type: "string" },
  "idle-ms": { type: "string" },
});
const smoke = values.smoke;
const steps = integerListOption(
  values.bridges ?? (smoke ? "20,50" : "1000,2000,5000,10000,20000,30000"),
  "bridges",
  1,
);
const agentCount = integerOption(
  values.agents ?? (smoke ? "1" : "3"),
  "agents",
  1,
);
const settleMs = integerOption(
  values["settle-ms"] ?? (smoke ? "200" : "3000"),
  "settle-ms",
  0,
);
const idleMs = integerOption(
  values["idle-ms"] ?? (smoke ? "400" : "120000"),
  "idle-ms",
  0,
);
/** Interval of the RSS readings during the idle window, in ms. */
const IDLE_SAMPLE_MS = smoke ? 200 : 10_000;
/**
 * One loopback source address per agent: from one address, a single
 * server port can take only as many connections as there are ephemeral
 * ports (about 28,000 on Linux).
 */
const localAddress = (agent: number): string => `127.0.0.${11 + agent}`;

interface MemoryStep {
  bridges: number;
  /** Bridges that failed to connect during this step, by error code. */
  failed: Record<string, number>;
  /** Bridges connected per second during this step. */
  connectRate: number;
  serverRssBytes: number;
  /** (RSS now - RSS before any bridge) / bridges. */
  rssBytesPerBridge: number;
  /** RSS growth since the previous step / bridges added since then. */
  marginalRssBytesPerBridge: number;
  redisUsedMemoryBytesPerBridge: number;
}

/** RSS readings while the last step's bridges idle. */
interface IdleWindow {
  bridges: number;
  /** Readings of (RSS - RSS before any bridge) / bridges, in order. */
  rssBytesPerBridge: number[];
  meanRssBytesPerBridge: number;
  minRssBytesPerBridge: number;
  maxRssBytesPerBridge: number;
}

/** Heap in use after a full collection, summed over the measured processes. */
interface RetainedHeap {
  /** Before any bridge connected. */
  baselineBytes: number;
  /** After the idle window. */
  bytes: number;
  bridges: number;
  bytesPerBridge: number;
  /**
   * Growth of the heap that V8 keeps reserved after the collection, per
   * bridge. Above `bytesPerBridge` by the free heap that V8 has not
   * returned, which RSS counts.
   */
  reservedBytesPerBridge: number;
  /** Growth of RSS right after the collection, per bridge. */
  collectedRssBytesPerBridge: number;
}

interface MemoryResult {
  target: string;
  description: string;
  baselineRssBytes: number;
  steps: MemoryStep[];
  idle: IdleWindow;
  retained: RetainedHeap;
}

/** Reads the RSS of `pids` every IDLE_SAMPLE_MS for idleMs, per bridge above `baselineRss`. */
async function watchIdle(
  pids: () => number[],
  baselineRss: number,
  bridges: number,
): Promise<IdleWindow> {
  const readings: number[] = [];
  const endAt = performance.now() + idleMs;
  for (;;) {
    const rss = totalResidentBytes(pids());
    readings.push(Math.round((rss - baselineRss) / Math.max(1, bridges)));
    if (performance.now() + IDLE_SAMPLE_MS > endAt) break;
    await new Promise((resolve) => setTimeout(resolve, IDLE_SAMPLE_MS));
  }
  return {
    bridges,
    rssBytesPerBridge: readings,
    meanRssBytesPerBridge: Math.round(
      readings.reduce((sum, value) => sum + value, 0) / readings.length,
    ),
    minRssBytesPerBridge: Math.min(...readings),
    maxRssBytesPerBridge: Math.max(...readings),
  };
}

const kib = (bytes: number): number => round(bytes / 1024, 1);

interface MemoryTarget {
  name: string;
  description: string;
  kind: ServerKind;
  urls: string[];
  /** PIDs whose RSS counts: the relay's workers, or the bare processes. */
  measuredPids: () => number[];
}

async function measureTarget(
  target: MemoryTarget,
  redisStats: RedisStats,
  probe: HeapProbe,
): Promise<MemoryResult> {
  console.log(`\n${target.name}: ${target.description}`);
  const agents = Array.from(
    { length: agentCount },
    (_, index) => new LoadAgent(`fleet-${index}`),
  );
  try {
    await Promise.all(agents.map((agent) => agent.ready()));
    await new Promise((resolve) => setTimeout(resolve, settleMs));
    const baselineRss = totalResidentBytes(target.measuredPids());
    const baselineHeap = await probe.collectedMemory(target.measuredPids());
    const baselineRedis = await redisStats.usedMemory();
    let previousRss = baselineRss;
    let connected = 0;
    const results: MemoryStep[] = [];
    for (const bridges of steps) {
      const adding = bridges - connected;
      const started = performance.now();
      const outcomes = await Promise.all(
        agents.map((agent, index) =>
          agent.call<FleetConnectResult>("fleet.connect", {
            kind: target.kind,
            urls: target.urls,
            count:
              Math.floor(adding / agentCount) +
              (index < adding % agentCount ? 1 : 0),
            localAddresses: [localAddress(index)],
            concurrency: 100,
          }),
        ),
      );
      const elapsedS = (performance.now() - started) / 1000;
      const failed: Record<string, number> = {};
      for (const outcome of outcomes) {
        for (const [code, count] of Object.entries(outcome.failed))
          failed[code] = (failed[code] ?? 0) + count;
      }
      const nowConnected = outcomes.reduce(
        (sum, outcome) => sum + outcome.connected,
        0,
      );
      const added = nowConnected - connected;
      connected = nowConnected;
      await new Promise((resolve) => setTimeout(resolve, settleMs));
      const rss = totalResidentBytes(target.measuredPids());
      const redisMemory = await redisStats.usedMemory();
      const step: MemoryStep = {
        bridges: connected,
        failed,
        connectRate: Math.round(added / elapsedS),
        serverRssBytes: rss,
        rssBytesPerBridge: Math.round(
          (rss - baselineRss) / Math.max(1, connected),
        ),
        marginalRssBytesPerBridge: Math.round(
          (rss - previousRss) / Math.max(1, added),
        ),
        redisUsedMemoryBytesPerBridge: Math.round(
          (redisMemory - baselineRedis) / Math.max(1, connected),
        ),
      };
      previousRss = rss;
      results.push(step);
      console.log(
        `  ${connected} bridges: ${round(rss / 2 ** 20, 1)} MiB RSS, ${round(step.rssBytesPerBridge / 1024, 1)} KiB per bridge, ${step.connectRate} connects/s`,
      );
    }
    const idle = await watchIdle(target.measuredPids, baselineRss, connected);
    console.log(
      `  idle for ${idleMs / 1000} s at ${connected} bridges: ${idle.rssBytesPerBridge.map(kib).join(", ")} KiB per bridge`,
    );
    const heap = await probe.collectedMemory(target.measuredPids());
    const perBridge = (after: number, before: number): number =>
      Math.round((after - before) / Math.max(1, connected));
    const retained: RetainedHeap = {
      baselineBytes: baselineHeap.heapUsed,
      bytes: heap.heapUsed,
      bridges: connected,
      bytesPerBridge: perBridge(heap.heapUsed, baselineHeap.heapUsed),
      reservedBytesPerBridge: perBridge(heap.heapTotal, baselineHeap.heapTotal),
      collectedRssBytesPerBridge: perBridge(heap.rss, baselineHeap.rss),
    };
    console.log(
      `  after a full collection, per bridge: ${kib(retained.bytesPerBridge)} KiB of heap in use, ${kib(retained.reservedBytesPerBridge)} KiB of heap reserved, ${kib(retained.collectedRssBytesPerBridge)} KiB of RSS`,
    );
    return {
      target: target.name,
      description: target.description,
      baselineRssBytes: baselineRss,
      steps: results,
      idle,
      retained,
    };
  } finally {
    await Promise.all(agents.map((agent) => agent.stop()));
  }
}

async function measureGroup<G extends { stop(): Promise<void> }>(
  cleanup: Cleanup,
  group: G,
  body: (group: G) => Promise<MemoryResult>,
): Promise<MemoryResult> {
  cleanup.add(group, (started) => started.stop());
  try {
    return await body(group);
  } finally {
    await group.stop();
  }
}

await runScenario(
  {
    name: "idle-memory",
    smoke,
    outDir: values.out,
    settings: { steps, agents: agentCount, settleMs, idleMs },
  },
  async (cleanup) => {
    const results: MemoryResult[] = [];
    const probe = cleanup.add(await HeapProbe.create(), (created) =>
      created.close(),
    );
    for (const system of ["relay", "bare"] as const) {
      // A fresh Redis per system, so its memory reading covers one system only.
      const redis = await startRedisServer();
      cleanup.add(redis, (server) => server.stop());
      const redisStats = await RedisStats.connect(redis.url);
      cleanup.add(redisStats, (stats) => stats.close());
      if (system === "relay") {
        results.push(
          await measureGroup(
            cleanup,
            await startBenchRelay(redis.url, 2, probe.env),
            (relay) =>
              measureTarget(
                {
                  name: "relay-2-workers",
                  description: "relay, 2 workers and Redis; RSS of the workers",
                  kind: "relay",
                  urls: relay.urls,
                  measuredPids: () => relay.workerPids(),
                },
                redisStats,
                probe,
              ),
          ),
        );
      } else {
        results.push(
          await measureGroup(
            cleanup,
            await startBare(2, redis.url, probe.env),
            (bare) =>
              measureTarget(
                {
                  name: "bare-adapter-2-processes",
                  description:
                    "bare Socket.IO, 2 processes on the Redis adapter; RSS of both",
                  kind: "bare",
                  urls: bare.urls,
                  measuredPids: () => bare.pids(),
                },
                redisStats,
                probe,
              ),
          ),
        );
      }
      await redisStats.close();
      await redis.stop();
    }
    printTable(
      "Memory per idle bridge",
      results.flatMap((result) =>
        result.steps.map((step) => ({
          target: result.target,
          bridges: step.bridges,
          "RSS MiB": round(step.serverRssBytes / 2 ** 20, 1),
          "KiB/bridge": kib(step.rssBytesPerBridge),
          "marginal KiB/bridge": kib(step.marginalRssBytesPerBridge),
          "redis KiB/bridge": kib(step.redisUsedMemoryBytesPerBridge),
          "connects/s": step.connectRate,
          failed: Object.values(step.failed).reduce((a, b) => a + b, 0),
        })),
      ),
    );
    printTable(
      `Memory per idle bridge over ${idleMs / 1000} s of idling after the last step`,
      results.map((result) => ({
        target: result.target,
        bridges: result.idle.bridges,
        "mean KiB/bridge": kib(result.idle.meanRssBytesPerBridge),
        "min KiB/bridge": kib(result.idle.minRssBytesPerBridge),
        "max KiB/bridge": kib(result.idle.maxRssBytesPerBridge),
        readings: result.idle.rssBytesPerBridge.length,
      })),
    );
    printTable(
      "Heap in use after a full collection, per idle bridge, after the idle window",
      results.map((result) => ({
        target: result.target,
        bridges: result.retained.bridges,
        "MiB before bridges": round(result.retained.baselineBytes / 2 ** 20, 1),
        "MiB after": round(result.retained.bytes / 2 ** 20, 1),
        "KiB/bridge": kib(result.retained.bytesPerBridge),
        "reserved KiB/bridge": kib(result.retained.reservedBytesPerBridge),
        "RSS KiB/bridge": kib(result.retained.collectedRssBytesPerBridge),
      })),
    );
    const [relay, bare] = results;
    const lastRelay = relay?.steps.at(-1);
    const lastBare = bare?.steps.at(-1);
    return {
      results,
      summary: {
        bridges: lastRelay?.bridges ?? 0,
        relayRssBytesPerBridge: lastRelay?.rssBytesPerBridge ?? null,
        bareRssBytesPerBridge: lastBare?.rssBytesPerBridge ?? null,
        relayVsBareRss: ratio(
          lastRelay?.rssBytesPerBridge ?? 0,
          lastBare?.rssBytesPerBridge ?? 0,
        ),
        relayIdleMeanRssBytesPerBridge:
          relay?.idle.meanRssBytesPerBridge ?? null,
        bareIdleMeanRssBytesPerBridge: bare?.idle.meanRssBytesPerBridge ?? null,
        relayVsBareIdleMeanRss: ratio(
          relay?.idle.meanRssBytesPerBridge ?? 0,
          bare?.idle.meanRssBytesPerBridge ?? 0,
        ),
        relayRetainedBytesPerBridge: relay?.retained.bytesPerBridge ?? null,
        bareRetainedBytesPerBridge: bare?.retained.bytesPerBridge ?? null,
        relayVsBareRetained: ratio(
          relay?.retained.bytesPerBridge ?? 0,
          bare?.retained.bytesPerBridge ?? 0,
        ),
        relayReservedHeapBytesPerBridge:
          relay?.retained.reservedBytesPerBridge ?? null,
        bareReservedHeapBytesPerBridge:
          bare?.retained.reservedBytesPerBridge ?? null,
        relayCollectedRssBytesPerBridge:
          relay?.retained.collectedRssBytesPerBridge ?? null,
        bareCollectedRssBytesPerBridge:
          bare?.retained.collectedRssBytesPerBridge ?? null,
      },
    };
  },
);
