/**
 * Runs a reconnect storm. Bridges running the SDK's BridgeClient, with
 * its default backoff of 1 s to 30 s and jitter, connect to a relay of 2
 * workers through proxies in the load agents. Then every connection is
 * cut at once, as a network failure or a load balancer restart would cut
 * them. Measures the time until every bridge has reconnected and had its
 * snapshot accepted, the retries by cause, and the relay's warnings and
 * errors.
 */
import { startRedisServer } from "../../test/support/redis-server.ts";
import { integerOption, parseBenchArgs } from "../lib/cli.ts";
import { CpuWindow } from "../lib/proc.ts";
import { RedisStats } from "../lib/redis-stats.ts";
import { printTable } from "../lib/results.ts";
import { runScenario } from "../lib/scenario.ts";
import { startBenchRelay } from "../lib/servers.ts";
import {
  round,
  summarizeLatencies,
  type LatencySummary,
} from "../lib/stats.ts";
import type { StormPhaseResult } from "../load/fleet.ts";
import { LoadAgent } from "../load/rpc.ts";

const USAGE = `Reconnect storm: every bridge connection cut at once.

  npm run bench:reconnect-storm -- [--bridges 5000] [--agents 2] [--timeout-ms 120000]

  --bridges N       bridges in the storm (default 5000)
  --agents N        load generator processes that share the bridges (default 2)
  --timeout-ms MS   longest wait for every bridge to be back, per phase (default 120000)`;

const values = parseBenchArgs(USAGE, {
  bridges: { type: "string" },
  agents: { type: "string" },
  "timeout-ms": { type: "string" },
});
const smoke = values.smoke;
const bridges = integerOption(
  values.bridges ?? (smoke ? "40" : "5000"),
  "bridges",
  1,
);
const agentCount = integerOption(values.agents ?? "2", "agents", 1);
const timeoutMs = integerOption(
  values["timeout-ms"] ?? (smoke ? "30000" : "120000"),
  "timeout-ms",
  1000,
);

/** One phase over all agents. */
interface PhaseSummary {
  phase: "connect" | "reconnect";
  bridges: number;
  synced: number;
  /** From the first agent's start of the phase until the last bridge synced, in ms; null if some never did. */
  allBackMs: number | null;
  syncTime: LatencySummary;
  retries: Record<string, number>;
  snapshotErrors: Record<string, number>;
  /** Relay log lines at warn level or above during the phase, by message. */
  relayWarnings: Record<string, number>;
  serverCpuMs: number;
  redisCpuMs: number;
}

function addCounts(
  into: Record<string, number>,
  from: Record<string, number>,
): void {
  for (const [key, count] of Object.entries(from))
    into[key] = (into[key] ?? 0) + count;
}

function summarizePhase(
  phase: PhaseSummary["phase"],
  parts: StormPhaseResult[],
  relayWarnings: Record<string, number>,
  cpu: { serverCpuMs: number; redisCpuMs: number },
): PhaseSummary {
  const firstStart = Math.min(...parts.map((part) => part.startedAt));
  const times = parts.flatMap((part) =>
    part.syncTimesMs.map((time) => time + part.startedAt - firstStart),
  );
  const retries: Record<string, number> = {};
  const snapshotErrors: Record<string, number> = {};
  for (const part of parts) {
    addCounts(retries, part.retries);
    addCounts(snapshotErrors, part.snapshotErrors);
  }
  const total = parts.reduce((sum, part) => sum + part.bridges, 0);
  return {
    phase,
    bridges: total,
    synced: times.length,
    allBackMs: times.length === total ? Math.max(0, ...times) : null,
    syncTime: summarizeLatencies(times),
    retries,
    snapshotErrors,
    relayWarnings,
    serverCpuMs: round(cpu.serverCpuMs),
    redisCpuMs: round(cpu.redisCpuMs),
  };
}

await runScenario(
  {
    name: "reconnect-storm",
    smoke,
    outDir: values.out,
    settings: { bridges, agents: agentCount, timeoutMs, workers: 2 },
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
    const relay = cleanup.add(await startBenchRelay(redis.url, 2), (group) =>
      group.stop(),
    );
    const agents = Array.from({ length: agentCount }, (_, index) =>
      cleanup.add(new LoadAgent(`storm-${index}`), (agent) => agent.stop()),
    );
    await Promise.all(agents.map((agent) => agent.ready()));
    const share = (index: number): number =>
      Math.floor(bridges / agentCount) + (index < bridges % agentCount ? 1 : 0);

    const runPhase = async (
      phase: PhaseSummary["phase"],
      start: (agent: LoadAgent, index: number) => Promise<StormPhaseResult>,
    ): Promise<PhaseSummary> => {
      const firstLog = relay.relay.logs.length;
      const server = new CpuWindow(relay.pids());
      const redisCpu = new CpuWindow([redisPid]);
      const parts = await Promise.all(agents.map(start));
      const warnings: Record<string, number> = {};
      for (const line of relay.relay.logs.slice(firstLog)) {
        if (line.level >= 40)
          warnings[line.msg] = (warnings[line.msg] ?? 0) + 1;
      }
      const summary = summarizePhase(phase, parts, warnings, {
        serverCpuMs: server.read().cpuMs,
        redisCpuMs: redisCpu.read().cpuMs,
      });
      console.log(
        `${phase}: ${summary.synced}/${summary.bridges} bridges synced, all back after ${summary.allBackMs ?? "never"} ms`,
      );
      return summary;
    };

    const connect = await runPhase("connect", (agent, index) =>
      agent.call("storm.start", {
        relayPort: relay.relay.port,
        count: share(index),
        timeoutMs,
      }),
    );
    await new Promise((resolve) => setTimeout(resolve, smoke ? 200 : 2000));
    const reconnect = await runPhase("reconnect", (agent) =>
      agent.call("storm.cut", { timeoutMs }),
    );
    const phases = [connect, reconnect];
    printTable(
      "Reconnect storm",
      phases.map((phase) => ({
        phase: phase.phase,
        bridges: phase.bridges,
        synced: phase.synced,
        "all back ms": phase.allBackMs,
        "p50 ms": phase.syncTime.p50Ms,
        "p99 ms": phase.syncTime.p99Ms,
        retries: Object.values(phase.retries).reduce((a, b) => a + b, 0),
        "snapshot errors": Object.values(phase.snapshotErrors).reduce(
          (a, b) => a + b,
          0,
        ),
        "relay warnings": Object.values(phase.relayWarnings).reduce(
          (a, b) => a + b,
          0,
        ),
        "server cpu s": round(phase.serverCpuMs / 1000),
      })),
    );
    for (const phase of phases) {
      if (Object.keys(phase.retries).length > 0)
        console.log(`${phase.phase} retries by cause:`, phase.retries);
      if (Object.keys(phase.relayWarnings).length > 0) {
        console.log(`${phase.phase} relay warnings:`, phase.relayWarnings);
      }
    }
    return {
      results: phases,
      summary: {
        bridges,
        reconnectAllBackMs: reconnect.allBackMs,
        reconnectErrors:
          Object.values(reconnect.snapshotErrors).reduce((a, b) => a + b, 0) +
          (bridges - reconnect.synced),
        reconnectRetries: Object.values(reconnect.retries).reduce(
          (a, b) => a + b,
          0,
        ),
      },
    };
  },
);
