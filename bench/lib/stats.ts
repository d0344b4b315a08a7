/** Percentiles of a set of latencies, in ms, rounded to 0.01 ms. */
export interface LatencySummary {
  count: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
}

/** Returns the value below which `fraction` of `sorted` lies (nearest rank). */
export function percentile(
  sorted: readonly number[],
  fraction: number,
): number {
  if (sorted.length === 0) return 0;
  const rank = Math.ceil(fraction * sorted.length) - 1;
  const index = Math.min(sorted.length - 1, Math.max(0, rank));
  return sorted[index]!;
}

/** Rounds `value` to `digits` decimal places. */
export function round(value: number, digits = 2): number {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}

/** Summarizes latencies in ms; sorts `latencies` in place. */
export function summarizeLatencies(latencies: number[]): LatencySummary {
  latencies.sort((a, b) => a - b);
  return {
    count: latencies.length,
    p50Ms: round(percentile(latencies, 0.5)),
    p90Ms: round(percentile(latencies, 0.9)),
    p99Ms: round(percentile(latencies, 0.99)),
    maxMs: round(percentile(latencies, 1)),
  };
}

/** Returns `numerator / denominator`, or null when the denominator is 0. */
export function ratio(
  numerator: number,
  denominator: number,
  digits = 2,
): number | null {
  if (denominator === 0) return null;
  return round(numerator / denominator, digits);
}
