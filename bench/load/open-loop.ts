import { summarizeLatencies, type LatencySummary } from "../lib/stats.ts";

/**
 * Sends one operation numbered `sequence`, scheduled for `scheduledAt`
 * (ms since the epoch), and resolves with null when it succeeded, or with
 * an error code.
 */
export type Operation = (
  sequence: number,
  scheduledAt: number,
) => Promise<string | null>;

/** Measurements of one open-loop run at a fixed rate. */
export interface OpenLoopStats {
  offeredRate: number;
  durationMs: number;
  scheduled: number;
  succeeded: number;
  /** Failed operations by error code. */
  errors: Record<string, number>;
  /** Operations with no outcome when the drain time ran out. */
  unfinished: number;
  /** Latency of the successful operations, from their scheduled start. */
  latency: LatencySummary;
  /** Maximum delay between an operation's scheduled and actual start, in ms. */
  maxStartLagMs: number;
}

/**
 * Starts `operation` at `rate` per second for `durationMs`, on a fixed
 * schedule that does not wait for earlier operations (an open loop), then
 * waits up to `drainMs` for the outstanding ones. Latency counts from the
 * scheduled start, so a generator or server that falls behind shows up in
 * the percentiles instead of lowering the offered rate.
 */
export async function runOpenLoop(
  rate: number,
  durationMs: number,
  drainMs: number,
  operation: Operation,
): Promise<OpenLoopStats> {
  const total = Math.max(1, Math.round((rate * durationMs) / 1000));
  const intervalMs = 1000 / rate;
  const latencies: number[] = [];
  const errors: Record<string, number> = {};
  let outstanding = 0;
  let finished = false;
  let maxStartLagMs = 0;
  let onIdle: (() => void) | undefined;

  const start = (sequence: number, scheduledAt: number): void => {
    outstanding += 1;
    maxStartLagMs = Math.max(maxStartLagMs, performance.now() - scheduledAt);
    const settle = (code: string | null): void => {
      outstanding -= 1;
      if (finished) return;
      if (code === null) latencies.push(performance.now() - scheduledAt);
      else errors[code] = (errors[code] ?? 0) + 1;
      if (outstanding === 0) onIdle?.();
    };
    operation(sequence, performance.timeOrigin + scheduledAt).then(
      settle,
      (error: unknown) => settle((error as Error).message || "FAILED"),
    );
  };

  const startedAt = performance.now();
  await new Promise<void>((resolve) => {
    let next = 0;
    const tick = (): void => {
      const elapsed = performance.now() - startedAt;
      const due = Math.min(total, Math.floor(elapsed / intervalMs) + 1);
      while (next < due) {
        start(next, startedAt + next * intervalMs);
        next += 1;
      }
      if (next >= total) {
        resolve();
        return;
      }
      const wait = startedAt + next * intervalMs - performance.now();
      setTimeout(tick, Math.max(0, wait));
    };
    tick();
  });

  if (outstanding > 0) {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, drainMs);
      onIdle = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }
  finished = true;
  const succeeded = latencies.length;
  return {
    offeredRate: rate,
    durationMs,
    scheduled: total,
    succeeded,
    errors,
    unfinished:
      total - succeeded - Object.values(errors).reduce((a, b) => a + b, 0),
    latency: summarizeLatencies(latencies),
    maxStartLagMs: Math.round(maxStartLagMs * 100) / 100,
  };
}
