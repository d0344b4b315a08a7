import type { Logger } from "../logger.ts";
import type { BridgeSession } from "./bridge-sessions.ts";
import type { WriterSession } from "./state-writer.ts";

export const WRITE_FAILED_REASON =
  "the relay could not store one of this bridge's reports; send a snapshot";

/**
 * Asks bridges whose writes the store rejected (Redis down, out of memory,
 * a read-only replica) for a snapshot, every `intervalMs` until one is
 * stored. The bridge had already applied the change it reported, so
 * without a snapshot the stored state would stay behind until its next
 * reconnect.
 */
export class ResyncScheduler {
  private readonly pending = new Map<string, WriterSession>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly current: (bridgeId: string) => BridgeSession | undefined,
    private readonly intervalMs: number,
    private readonly logger: Logger,
  ) {}

  /** Number of bridges waiting for a stored snapshot. */
  get size(): number {
    return this.pending.size;
  }

  writeFailed(session: WriterSession): void {
    if (this.pending.has(session.bridgeId)) return;
    this.pending.set(session.bridgeId, session);
    this.logger.warn(
      { bridgeId: session.bridgeId, epoch: session.epoch },
      "bridge state write failed, asking for a snapshot until one is stored",
    );
    this.timer ??= setInterval(() => this.askForSnapshots(), this.intervalMs);
    this.timer.unref();
  }

  snapshotStored(session: WriterSession): void {
    const waiting = this.pending.get(session.bridgeId);
    if (waiting === undefined || waiting.epoch > session.epoch) return;
    this.pending.delete(session.bridgeId);
    this.stopWhenIdle();
  }

  close(): void {
    this.pending.clear();
    this.stopWhenIdle();
  }

  private askForSnapshots(): void {
    for (const [bridgeId, session] of this.pending) {
      const holder = this.current(bridgeId);
      // A newer connection sends its own snapshot when it connects.
      if (holder === undefined || holder.epoch !== session.epoch) {
        this.pending.delete(bridgeId);
        continue;
      }
      holder.socket.emit("state:resync", { reason: WRITE_FAILED_REASON });
    }
    this.stopWhenIdle();
  }

  private stopWhenIdle(): void {
    if (this.pending.size > 0 || this.timer === undefined) return;
    clearInterval(this.timer);
    this.timer = undefined;
  }
}
