import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";

/** Kernel clock ticks per second, the unit of utime and stime in /proc/<pid>/stat. */
const CLOCK_TICKS_PER_SECOND = readClockTicks();

function readClockTicks(): number {
  try {
    const ticks = Number(execFileSync("getconf", ["CLK_TCK"]).toString());
    return Number.isInteger(ticks) && ticks > 0 ? ticks : 100;
  } catch {
    return 100;
  }
}

/**
 * Returns the CPU time (user + system) that process `pid` has used, in ms,
 * read from /proc/<pid>/stat. The resolution is one clock tick (10 ms on
 * Linux with CLK_TCK 100), so measure windows of many operations.
 */
export function cpuTimeMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // The command name sits in parentheses and may contain spaces, so the
  // fields are counted from the last closing parenthesis on.
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // Fields 14 (utime) and 15 (stime) of proc(5), after pid and comm.
  const ticks = Number(fields[11]) + Number(fields[12]);
  return (ticks * 1000) / CLOCK_TICKS_PER_SECOND;
}

/** Returns the summed CPU time of `pids` in ms. */
export function totalCpuTimeMs(pids: readonly number[]): number {
  return pids.reduce((sum, pid) => sum + cpuTimeMs(pid), 0);
}

/** Returns the resident set size of process `pid` in bytes, from /proc/<pid>/status. */
export function residentBytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  const match = /^VmRSS:\s+(\d+) kB$/m.exec(status);
  if (match === null) throw new Error(`no VmRSS line for process ${pid}`);
  return Number(match[1]) * 1024;
}

/** Returns the summed resident set size of `pids` in bytes. */
export function totalResidentBytes(pids: readonly number[]): number {
  return pids.reduce((sum, pid) => sum + residentBytes(pid), 0);
}

/** CPU time used by a set of processes over a window. */
export class CpuWindow {
  private readonly startMs: number;
  private readonly startedAt = performance.now();

  constructor(private readonly pids: readonly number[]) {
    this.startMs = totalCpuTimeMs(pids);
  }

  /** Returns the CPU time used since the window opened, and its share of one core. */
  read(): { cpuMs: number; coreShare: number } {
    const cpuMs = totalCpuTimeMs(this.pids) - this.startMs;
    const elapsedMs = performance.now() - this.startedAt;
    return { cpuMs, coreShare: elapsedMs > 0 ? cpuMs / elapsedMs : 0 };
  }
}
