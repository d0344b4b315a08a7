/** Markdown tables of the benchmark results, for docs/benchmarks.md. */
import type { BenchResult } from "../lib/results.ts";

type Cell = string | number | null | undefined;

/** Returns a Markdown table; numeric columns align right. */
export function markdownTable(rows: Record<string, Cell>[]): string {
  if (rows.length === 0) return "(no rows)\n";
  const columns = Object.keys(rows[0]!);
  const text = (value: Cell): string =>
    value === null || value === undefined ? "-" : String(value);
  const numeric = columns.map((column) =>
    rows.every((row) => typeof row[column] !== "string"),
  );
  const widths = columns.map((column) =>
    Math.max(column.length, 3, ...rows.map((row) => text(row[column]).length)),
  );
  const line = (cells: string[]): string =>
    `| ${cells.map((cell, index) => (numeric[index] ? cell.padStart(widths[index]!) : cell.padEnd(widths[index]!))).join(" | ")} |`;
  const rule = `| ${widths.map((width, index) => (numeric[index] ? `${"-".repeat(width - 1)}:` : "-".repeat(width))).join(" | ")} |`;
  return (
    [
      line(columns),
      rule,
      ...rows.map((row) => line(columns.map((column) => text(row[column])))),
    ].join("\n") + "\n"
  );
}

const sum = (counts: Record<string, number>): number =>
  Object.values(counts).reduce((total, count) => total + count, 0);
const kib = (bytes: number): number => Math.round(bytes / 102.4) / 10;
const mib = (bytes: number): number => Math.round(bytes / (1024 * 102.4)) / 10;

interface CommandStepRow {
  rate: number;
  sustained: boolean;
  p50Ms: number;
  p99Ms: number;
  serverCpuMsPerCommand: number;
  redisCpuMsPerCommand: number | null;
  generatorCores: number;
  errors: Record<string, number>;
  unfinished: number;
}

/** Returns the Markdown tables of one scenario's result. */
export function scenarioTables(result: BenchResult): string {
  switch (result.scenario) {
    case "round-trip":
      return markdownTable(
        (result.results as Record<string, number | string>[]).map((row) => ({
          placement: row.placement,
          commands: row.commands,
          "p50 ms": row.p50Ms,
          "p90 ms": row.p90Ms,
          "p99 ms": row.p99Ms,
          "max ms": row.maxMs,
        })),
      );
    case "command-rate":
    case "mqtt": {
      const rows = result.results as {
        target: string;
        maxSustainedRate?: number;
        steps: CommandStepRow[];
      }[];
      const steps = rows.flatMap((row) =>
        row.steps.map((step) => ({
          target: row.target,
          "offered/s": step.rate,
          "p50 ms": step.p50Ms,
          "p99 ms": step.p99Ms,
          failed: sum(step.errors) + step.unfinished,
          "server CPU ms/cmd": step.serverCpuMsPerCommand,
          "Redis CPU ms/cmd": step.redisCpuMsPerCommand,
          "generator cores": step.generatorCores,
          sustained: step.sustained ? "yes" : "no",
        })),
      );
      const maxima =
        result.scenario === "command-rate"
          ? `\n${markdownTable(rows.map((row) => ({ target: row.target, "max sustained/s": row.maxSustainedRate })))}`
          : "";
      return markdownTable(steps) + maxima;
    }
    case "command-scale": {
      interface FixedRateRun {
        step: CommandStepRow;
        redisCommandsPerCommand: number;
      }
      const rows = result.results as {
        system: string;
        processes: number;
        maxSustainedRate: number;
        cost: FixedRateRun;
        halfRate: FixedRateRun;
      }[];
      return markdownTable(
        rows.map((row) => ({
          system: row.system,
          processes: row.processes,
          [`Redis cmds/cmd at ${row.cost.step.rate}/s`]:
            row.cost.redisCommandsPerCommand,
          "server CPU ms/cmd": row.cost.step.serverCpuMsPerCommand,
          "Redis CPU ms/cmd": row.cost.step.redisCpuMsPerCommand,
          "max sustained/s": row.maxSustainedRate,
          "half rate/s": row.halfRate.step.rate,
          "p50 ms at half": row.halfRate.step.p50Ms,
          "p99 ms at half": row.halfRate.step.p99Ms,
        })),
      );
    }
    case "fanout": {
      const rows = result.results as {
        target: string;
        dashboards: number;
        maxSustainedDeliveriesPerSecond: number;
        steps: {
          rate: number;
          sustained: boolean;
          deliveriesPerSecond: number;
          deliveries: number;
          expectedDeliveries: number;
          p50Ms: number;
          p99Ms: number;
          serverCpuUsPerDelivery: number;
          maxAgentCores: number;
        }[];
      }[];
      return (
        markdownTable(
          rows.flatMap((row) =>
            row.steps.map((step) => ({
              target: row.target,
              "changes/s": step.rate,
              "deliveries/s": step.deliveriesPerSecond,
              delivered: `${step.deliveries}/${step.expectedDeliveries}`,
              "p50 ms": step.p50Ms,
              "p99 ms": step.p99Ms,
              "server CPU µs/delivery": step.serverCpuUsPerDelivery,
              "busiest agent cores": step.maxAgentCores,
              sustained: step.sustained ? "yes" : "no",
            })),
          ),
        ) +
        `\n${markdownTable(rows.map((row) => ({ target: row.target, "max sustained deliveries/s": row.maxSustainedDeliveriesPerSecond })))}`
      );
    }
    case "idle-memory": {
      const rows = result.results as {
        target: string;
        steps: {
          bridges: number;
          serverRssBytes: number;
          rssBytesPerBridge: number;
          marginalRssBytesPerBridge: number;
          redisUsedMemoryBytesPerBridge: number;
          connectRate: number;
          failed: Record<string, number>;
        }[];
      }[];
      return markdownTable(
        rows.flatMap((row) =>
          row.steps.map((step) => ({
            target: row.target,
            bridges: step.bridges,
            "RSS MiB": mib(step.serverRssBytes),
            "KiB/bridge": kib(step.rssBytesPerBridge),
            "marginal KiB/bridge": kib(step.marginalRssBytesPerBridge),
            "Redis KiB/bridge": kib(step.redisUsedMemoryBytesPerBridge),
            "connects/s": step.connectRate,
            failed: sum(step.failed),
          })),
        ),
      );
    }
    case "reconnect-storm": {
      const rows = result.results as {
        phase: string;
        bridges: number;
        synced: number;
        allBackMs: number | null;
        syncTime: { p50Ms: number; p99Ms: number };
        retries: Record<string, number>;
        snapshotErrors: Record<string, number>;
        relayWarnings: Record<string, number>;
        serverCpuMs: number;
      }[];
      return markdownTable(
        rows.map((row) => ({
          phase: row.phase,
          bridges: row.bridges,
          synced: row.synced,
          "all back ms": row.allBackMs,
          "p50 ms": row.syncTime.p50Ms,
          "p99 ms": row.syncTime.p99Ms,
          retries: Object.entries(row.retries)
            .map(([code, count]) => `${count} ${code}`)
            .join(", "),
          "snapshot errors": sum(row.snapshotErrors),
          "relay warnings": sum(row.relayWarnings),
          "server CPU s": Math.round(row.serverCpuMs / 100) / 10,
        })),
      );
    }
    default:
      return `(no table for scenario ${result.scenario})\n`;
  }
}
