import { fork, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";

/** Messages from the test to a fleet process. */
export type FleetCommand =
  | { type: "start"; relayPort: number; firstIndex: number; count: number }
  | { type: "cut" }
  | { type: "report" };

/** Counts a fleet process keeps about its bridges' reconnect attempts. */
export interface FleetStats {
  /** Scheduled reconnects by the error code that caused them. */
  retries: Record<string, number>;
  /** Handshakes rejected with `RATE_LIMITED`. */
  rateLimited: number;
  /** `RATE_LIMITED` retries scheduled sooner than the relay's `retryAfterMs`. */
  earlyRetries: number;
  minRetryAfterMs: number | null;
  maxRetryAfterMs: number | null;
  /** Smallest and largest wait beyond `retryAfterMs` that the SDK added (its jitter). */
  minExtraDelayMs: number | null;
  maxExtraDelayMs: number | null;
  /** Connections the last cut destroyed. */
  connectionsCut: number;
}

/** Messages from a fleet process to the test. */
export type FleetReport =
  | { type: "synced"; phase: string; at: number }
  | { type: "progress"; phase: string; pending: number; stats: FleetStats }
  | { type: "failure"; message: string };

const FLEET_SCRIPT = fileURLToPath(
  new URL("./bridge-fleet-process.ts", import.meta.url),
);

/** A child process running `count` simulated bridges. */
export class BridgeFleet {
  readonly failures: string[] = [];
  private lastProgress: Extract<FleetReport, { type: "progress" }> | undefined;
  private readonly syncWaiters = new Map<string, (at: number) => void>();
  private readonly syncedAt = new Map<string, number>();
  private readonly child: ChildProcess;
  private readonly exited: Promise<void>;

  constructor() {
    this.child = fork(FLEET_SCRIPT, [], {
      execArgv: ["--import", "tsx"],
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    });
    this.exited = new Promise((resolve) => this.child.once("exit", resolve));
    this.child.on("message", (report: FleetReport) => this.receive(report));
  }

  /** Starts the bridges numbered `firstIndex` to `firstIndex + count - 1`. */
  start(relayPort: number, firstIndex: number, count: number): void {
    this.send({ type: "start", relayPort, firstIndex, count });
  }

  /** Destroys every bridge connection at once, so the bridges reconnect. */
  cut(): void {
    this.send({ type: "cut" });
  }

  /**
   * Resolves with the time (ms since the epoch) at which every bridge had
   * its snapshot acknowledged in `phase`, or rejects after `timeoutMs`.
   */
  waitForSynced(phase: string, timeoutMs: number): Promise<number> {
    const done = this.syncedAt.get(phase);
    if (done !== undefined) return Promise.resolve(done);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.syncWaiters.delete(phase);
        const pending = this.lastProgress?.pending ?? "unknown";
        const stats = this.lastProgress?.stats;
        reject(
          new Error(
            `fleet phase ${phase} timed out after ${timeoutMs} ms with ${pending} bridges not synced; retries by code ${JSON.stringify(stats?.retries)}, max retryAfterMs ${stats?.maxRetryAfterMs}; failures: ${this.failures.slice(0, 5).join("; ")}`,
          ),
        );
      }, timeoutMs);
      this.syncWaiters.set(phase, (at) => {
        clearTimeout(timer);
        resolve(at);
      });
    });
  }

  /** Bridges not yet synced in the current phase, as of the last progress report. */
  get pending(): number | undefined {
    return this.lastProgress?.pending;
  }

  /** Asks for fresh counts and resolves with them. */
  async stats(): Promise<FleetStats> {
    const before = this.lastProgress;
    this.send({ type: "report" });
    while (this.lastProgress === before) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    return this.lastProgress!.stats;
  }

  /** Ends the process; its bridges' connections close with it. */
  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    if (this.child.connected) this.child.disconnect();
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 5000);
    await this.exited;
    clearTimeout(timer);
  }

  private send(command: FleetCommand): void {
    this.child.send(command);
  }

  private receive(report: FleetReport): void {
    switch (report.type) {
      case "synced":
        this.syncedAt.set(report.phase, report.at);
        this.syncWaiters.get(report.phase)?.(report.at);
        this.syncWaiters.delete(report.phase);
        return;
      case "progress":
        this.lastProgress = report;
        return;
      case "failure":
        this.failures.push(report.message);
        return;
    }
  }
}
