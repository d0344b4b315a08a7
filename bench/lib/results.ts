import { spawnSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository's root folder. */
export const ROOT = fileURLToPath(new URL("../..", import.meta.url));

/** Folder that benchmark runs write their JSON to unless `--out` names another. */
export const DEFAULT_RESULTS_DIR = join(ROOT, "bench", "results");

/** The machine a benchmark ran on, recorded in every result. */
export interface MachineInfo {
  cpuModel: string;
  cores: number;
  memoryBytes: number;
  node: string;
  redisServer: string | null;
  mosquitto: string | null;
  /** 1-minute load average when the run started: above 0.5 per core, the figures are noisy. */
  loadAverage1m: number;
  /** Commit of the measured code, with `+changes` when the working tree differed from it. */
  revision: string | null;
}

/** Fields every result file has; `results` and `summary` depend on the scenario. */
export interface BenchResult {
  scenario: string;
  /** True for a tiny run that only checks that the scenario works. */
  smoke: boolean;
  startedAt: string;
  durationMs: number;
  machine: MachineInfo;
  settings: Record<string, unknown>;
  results: object[];
  summary: Record<string, unknown>;
  /** Reasons for the parts of the scenario that did not run, such as a missing binary. */
  skipped: string[];
}

/** Returns the first line a command prints, or null when it cannot run. */
function commandVersion(command: string, args: string[]): string | null {
  // `mosquitto -h` prints its version but exits with status 3, so the status is not checked.
  const run = spawnSync(command, args, { stdio: ["ignore", "pipe", "pipe"] });
  if (run.error !== undefined) return null;
  const output = `${run.stdout.toString()}${run.stderr.toString()}`.trim();
  return output === "" ? null : output.split("\n")[0]!.trim();
}

function cpuModel(): string {
  try {
    const cpuinfo = readFileSync("/proc/cpuinfo", "utf8");
    const match = /^model name\s*:\s*(.+)$/m.exec(cpuinfo);
    if (match !== null) return match[1]!.trim();
  } catch {
    // Not Linux: fall back to what Node reports.
  }
  return os.cpus()[0]?.model ?? "unknown";
}

function revision(): string | null {
  const head = commandVersion("git", [
    "-C",
    ROOT,
    "rev-parse",
    "--short",
    "HEAD",
  ]);
  if (head === null || head.includes(" ")) return null;
  const status = spawnSync("git", ["-C", ROOT, "status", "--porcelain"], {
    stdio: ["ignore", "pipe", "ignore"],
  });
  return status.stdout.toString().trim() === "" ? head : `${head}+changes`;
}

/** Returns the description of this machine and its tools. */
export function machineInfo(): MachineInfo {
  return {
    cpuModel: cpuModel(),
    cores: os.availableParallelism(),
    memoryBytes: os.totalmem(),
    node: process.version,
    redisServer: commandVersion("redis-server", ["--version"]),
    mosquitto: commandVersion("mosquitto", ["-h"]),
    loadAverage1m: Number(os.loadavg()[0]!.toFixed(2)),
    revision: revision(),
  };
}

/** Writes `result` as `<dir>/<scenario>-<time>.json` and returns the path. */
export function writeResult(dir: string, result: BenchResult): string {
  mkdirSync(dir, { recursive: true });
  const stamp = result.startedAt.replace(/[:.]/g, "-");
  const file = join(dir, `${result.scenario}-${stamp}.json`);
  writeFileSync(file, `${JSON.stringify(result, null, 2)}\n`);
  return file;
}

type Cell = string | number | boolean | null | undefined;

function formatCell(value: Cell): string {
  if (value === null || value === undefined) return "-";
  return String(value);
}

/** Prints `rows` as an aligned text table under `title`; numbers align right. */
export function printTable(title: string, rows: Record<string, Cell>[]): void {
  console.log(`\n${title}`);
  if (rows.length === 0) {
    console.log("  (no rows)");
    return;
  }
  const columns = [...new Set(rows.flatMap((row) => Object.keys(row)))];
  const widths = columns.map((column) =>
    Math.max(
      column.length,
      ...rows.map((row) => formatCell(row[column]).length),
    ),
  );
  const line = (cells: string[], numeric: boolean[]): string =>
    cells
      .map((cell, index) =>
        numeric[index]
          ? cell.padStart(widths[index]!)
          : cell.padEnd(widths[index]!),
      )
      .join("  ");
  console.log(
    line(
      columns,
      columns.map(() => false),
    ),
  );
  console.log(widths.map((width) => "-".repeat(width)).join("  "));
  for (const row of rows) {
    const cells = columns.map((column) => formatCell(row[column]));
    const numeric = columns.map((column) => typeof row[column] === "number");
    console.log(line(cells, numeric));
  }
}
