import { readFileSync } from "node:fs";

export const MIB = 1024 * 1024;

/** Reads a process's resident set size from /proc (Linux) in bytes, or null once it has exited. */
export function residentBytes(pid: number): number | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const match = /^VmRSS:\s+(\d+) kB$/m.exec(status);
    return match === null ? null : Number(match[1]) * 1024;
  } catch {
    return null;
  }
}

/** Returns true while a process with `pid` exists. */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Samples the RSS of `pids` every `intervalMs` until `stop()`, which returns the maximum seen. */
export function sampleMaxRss(pids: number[], intervalMs = 100) {
  let max = 0;
  const sample = (): void => {
    for (const pid of pids) max = Math.max(max, residentBytes(pid) ?? 0);
  };
  sample();
  const timer = setInterval(sample, intervalMs);
  return {
    stop: (): number => {
      clearInterval(timer);
      sample();
      return max;
    },
  };
}

/** Returns the value of one series, such as `name{label="value"}`, from a relay's `/metrics`, or 0 when absent. */
export async function metricValue(
  url: string,
  series: string,
): Promise<number> {
  const response = await fetch(`${url}/metrics`);
  const text = await response.text();
  const line = text.split("\n").find((entry) => entry.startsWith(`${series} `));
  return line === undefined ? 0 : Number(line.slice(series.length + 1));
}
