import type { CommandSetup, PairSpec } from "../load/commands.ts";
import type { OpenLoopStats } from "../load/open-loop.ts";
import type { LoadAgent } from "../load/rpc.ts";
import { CpuWindow } from "./proc.ts";
import { round } from "./stats.ts";
import { findMaxSustainedRate, type Step } from "./ladder.ts";

/** Commands a step waits for after its last one was sent, at most, in ms. */
const DRAIN_MS = 3000;

/** A fixed-rate run of commands and what it cost the servers. */
export interface CommandStep extends Step {
  succeeded: number;
  errors: Record<string, number>;
  unfinished: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
  /** CPU time of the server processes (relay, baseline or broker) per successful command, in ms. */
  serverCpuMsPerCommand: number;
  /** CPU time of redis-server per successful command, in ms; null without Redis. */
  redisCpuMsPerCommand: number | null;
  /** Share of one core the server processes used during the step. */
  serverCores: number;
  /** Share of one core the load generator used: near 1, it may be the limit. */
  generatorCores: number;
}

export interface CommandTarget {
  name: string;
  description: string;
  setup: CommandSetup;
  /** PIDs of the serving processes, read at each step. */
  serverPids: () => number[];
  /** PID of redis-server when the target uses Redis. */
  redisPid?: number;
}

/**
 * Runs commands at `rate` per second for `durationMs` through `agent`,
 * which must have set up the target's pairs, and reads the CPU time of
 * the servers, Redis and the agent around the run. A step is sustained
 * when every command succeeded and the 99th percentile is under
 * `p99TargetMs`.
 */
export async function measureCommandStep(
  agent: LoadAgent,
  target: CommandTarget,
  rate: number,
  durationMs: number,
  p99TargetMs: number,
): Promise<CommandStep> {
  const server = new CpuWindow(target.serverPids());
  const redis =
    target.redisPid === undefined
      ? undefined
      : new CpuWindow([target.redisPid]);
  const generator = new CpuWindow([agent.pid]);
  const stats = await agent.call<OpenLoopStats>("commands.run", {
    rate,
    durationMs,
    drainMs: DRAIN_MS,
  });
  const serverCpu = server.read();
  const redisCpu = redis?.read();
  const generatorCpu = generator.read();
  const failures = Object.values(stats.errors).reduce(
    (sum, count) => sum + count,
    0,
  );
  const perCommand = (cpuMs: number): number =>
    stats.succeeded === 0 ? 0 : round(cpuMs / stats.succeeded, 4);
  return {
    rate,
    sustained:
      failures === 0 &&
      stats.unfinished === 0 &&
      stats.latency.p99Ms < p99TargetMs,
    succeeded: stats.succeeded,
    errors: stats.errors,
    unfinished: stats.unfinished,
    p50Ms: stats.latency.p50Ms,
    p90Ms: stats.latency.p90Ms,
    p99Ms: stats.latency.p99Ms,
    maxMs: stats.latency.maxMs,
    serverCpuMsPerCommand: perCommand(serverCpu.cpuMs),
    redisCpuMsPerCommand:
      redisCpu === undefined ? null : perCommand(redisCpu.cpuMs),
    serverCores: round(serverCpu.coreShare),
    generatorCores: round(generatorCpu.coreShare),
  };
}

/** Returns the table row of a step. */
export function stepRow(
  target: string,
  step: CommandStep,
): Record<string, string | number | boolean | null> {
  return {
    target,
    "rate/s": step.rate,
    ok: step.sustained,
    "p50 ms": step.p50Ms,
    "p99 ms": step.p99Ms,
    "max ms": step.maxMs,
    failed:
      Object.values(step.errors).reduce((a, b) => a + b, 0) + step.unfinished,
    "server cpu ms/cmd": step.serverCpuMsPerCommand,
    "redis cpu ms/cmd": step.redisCpuMsPerCommand,
    "generator cores": step.generatorCores,
  };
}

/** Settings of the search for a target's maximum sustained rate. */
export interface LadderSettings {
  rates: number[];
  refinements: number;
  stepMs: number;
  /** An unrecorded step at the lowest rate first, for the JIT and connection buffers, in ms. */
  warmupMs: number;
  settleMs: number;
  p99TargetMs: number;
}

/** A target's steps and the highest rate it sustained. */
export interface TargetResult {
  target: string;
  description: string;
  pairs: number;
  maxSustainedRate: number;
  steps: CommandStep[];
}

/** Returns `count` pair specs that take the given bridge and app URLs in turn. */
export function pairSpecs(
  count: number,
  bridgeUrls: string[],
  appUrls: string[],
  placement: PairSpec["placement"],
): PairSpec[] {
  return Array.from({ length: count }, (_, index) => ({
    bridgeUrl: bridgeUrls[index % bridgeUrls.length]!,
    appUrl: appUrls[index % appUrls.length]!,
    placement,
  }));
}

/** Sets up the target's pairs in `agent` and searches for its maximum sustained rate. */
export async function measureTarget(
  agent: LoadAgent,
  target: CommandTarget,
  settings: LadderSettings,
): Promise<TargetResult> {
  console.log(`\n${target.name}: ${target.description}`);
  await agent.call("commands.setup", target.setup);
  const lowest = settings.rates[0]!;
  await measureCommandStep(
    agent,
    target,
    lowest,
    settings.warmupMs,
    settings.p99TargetMs,
  );
  const ladder = await findMaxSustainedRate({
    rates: settings.rates,
    refinements: settings.refinements,
    settleMs: settings.settleMs,
    runStep: async (rate) => {
      const step = await measureCommandStep(
        agent,
        target,
        rate,
        settings.stepMs,
        settings.p99TargetMs,
      );
      console.log(
        `  ${rate}/s: p50 ${step.p50Ms} ms, p99 ${step.p99Ms} ms, ${step.sustained ? "sustained" : "not sustained"}`,
      );
      return step;
    },
  });
  await agent.call("commands.close");
  return {
    target: target.name,
    description: target.description,
    pairs: target.setup.pairs.length,
    ...ladder,
  };
}
