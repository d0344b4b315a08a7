/**
 * Draws the benchmark plots as SVG from the newest full (not --smoke)
 * result of each scenario: command latency against offered load, fan-out
 * latency against deliveries per second, and server memory against idle
 * bridge connections. Prints each scenario's tables as Markdown.
 *
 *   npm run bench:plot -- [--results bench/results] [--svg-dir docs/benchmarks]
 */
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { DEFAULT_RESULTS_DIR, ROOT, type BenchResult } from "../lib/results.ts";
import { lineChart } from "./svg.ts";
import { scenarioTables } from "./tables.ts";

const { values } = parseArgs({
  options: {
    results: { type: "string", default: DEFAULT_RESULTS_DIR },
    "svg-dir": { type: "string", default: join(ROOT, "docs", "benchmarks") },
  },
});
const resultsDir = values.results;
const svgDir = values["svg-dir"];

/** Returns the newest full result of `scenario`, or undefined when there is none. */
function latestResult(scenario: string): BenchResult | undefined {
  let files: string[];
  try {
    files = readdirSync(resultsDir);
  } catch {
    return undefined;
  }
  // Names end in an ISO time, so the lexical order is the time order.
  const candidates = files
    .filter((file) => file.startsWith(`${scenario}-`) && file.endsWith(".json"))
    .sort()
    .reverse();
  for (const file of candidates) {
    const result = JSON.parse(
      readFileSync(join(resultsDir, file), "utf8"),
    ) as BenchResult;
    if (result.scenario === scenario && !result.smoke) return result;
  }
  return undefined;
}

function write(name: string, svg: string): void {
  mkdirSync(svgDir, { recursive: true });
  const file = join(svgDir, name);
  writeFileSync(file, svg);
  console.log(`wrote ${file}`);
}

interface CommandRateResult {
  target: string;
  steps: { rate: number; p99Ms: number; p50Ms: number }[];
}

interface FanoutResult {
  target: string;
  dashboards: number;
  steps: { rate: number; p99Ms: number }[];
}

interface MemoryResult {
  target: string;
  baselineRssBytes: number;
  steps: { bridges: number; serverRssBytes: number }[];
}

/**
 * Returns one point per rate: a rate that ran twice (a failed step is
 * repeated once) keeps its last run.
 */
function lastPerRate<T extends { rate: number }>(steps: T[]): T[] {
  const byRate = new Map<number, T>();
  for (const step of steps) byRate.set(step.rate, step);
  return [...byRate.values()].sort((a, b) => a.rate - b.rate);
}

const commandRate = latestResult("command-rate");
if (commandRate === undefined) {
  console.log(
    `no full command-rate result in ${resultsDir}: command latency plot skipped`,
  );
} else {
  const results = commandRate.results as CommandRateResult[];
  write(
    "command-latency.svg",
    lineChart({
      title: "Command round trip: p99 latency against offered load",
      xLabel: "offered commands per second (log scale)",
      yLabel: "p99 round trip, ms (log scale)",
      logX: true,
      logY: true,
      thresholds: [{ y: 100, label: "target: p99 < 100 ms" }],
      series: results.map((result) => ({
        name: result.target,
        points: lastPerRate(result.steps).map(
          (step) => [step.rate, step.p99Ms] as [number, number],
        ),
      })),
    }),
  );
}

const fanout = latestResult("fanout");
if (fanout === undefined) {
  console.log(
    `no full fanout result in ${resultsDir}: fan-out latency plot skipped`,
  );
} else {
  const results = fanout.results as FanoutResult[];
  write(
    "fanout-latency.svg",
    lineChart({
      title: `State change to ${results[0]?.dashboards ?? "?"} dashboards: p99 against load`,
      xLabel: "offered deliveries per second (log scale)",
      yLabel: "p99 delivery latency, ms (log scale)",
      logX: true,
      logY: true,
      thresholds: [{ y: 50, label: "target: p99 < 50 ms" }],
      series: results.map((result) => ({
        name: result.target,
        points: lastPerRate(result.steps).map(
          (step) =>
            [step.rate * result.dashboards, step.p99Ms] as [number, number],
        ),
      })),
    }),
  );
}

const memory = latestResult("idle-memory");
if (memory === undefined) {
  console.log(
    `no full idle-memory result in ${resultsDir}: memory plot skipped`,
  );
} else {
  const results = memory.results as MemoryResult[];
  write(
    "idle-memory.svg",
    lineChart({
      title: "Server memory against idle bridge connections",
      xLabel: "connected idle bridges",
      yLabel: "RSS growth of the server processes, MiB",
      series: results.map((result) => ({
        name: result.target,
        points: [
          [0, 0],
          ...result.steps.map(
            (step) =>
              [
                step.bridges,
                (step.serverRssBytes - result.baselineRssBytes) / 2 ** 20,
              ] as [number, number],
          ),
        ],
      })),
    }),
  );
}

for (const scenario of [
  "round-trip",
  "command-rate",
  "command-scale",
  "mqtt",
  "fanout",
  "idle-memory",
  "reconnect-storm",
]) {
  const result = latestResult(scenario);
  if (result === undefined) continue;
  console.log(
    `\n### ${scenario} (${result.startedAt}, load average ${result.machine.loadAverage1m})\n`,
  );
  console.log(scenarioTables(result));
}
