import type { Logger } from "../logger.ts";
import {
  presenceLeaseRenewals,
  presenceSweptBridges,
} from "../metrics/relay-metrics.ts";
import { RepeatLimiter } from "../logging/repeat-limiter.ts";
import type { RedisLeaseTable, RenewResult } from "../state/lease-table.ts";
import type { StateStore } from "../state/store.ts";
import type { BridgeSessions, ConnectionIndex } from "./bridge-sessions.ts";
import type { AppBroadcaster } from "./broadcaster.ts";

/**
 * TTLs that a process renews its own lease for, after renewals failed,
 * before it sweeps others. In a CI run of a Redis Cluster failover with a
 * 1.5 s TTL, one process resumed renewing more than a TTL after another,
 * whose sweep then released its live bridges.
 * NOTE: two TTLs is an estimate from that one run, not a bound.
 */
const RECOVERY_TTLS = 2;

/** Bridges read and released per store round trip during a sweep. */
const SWEEP_BATCH = 500;
/** Expired servers looked at per sweep check. */
const EXPIRED_PER_CHECK = 10;
/** Minimum time a sweep lock is held; a sweep that outlives it may run twice, harmlessly. */
const MIN_SWEEP_LOCK_MS = 30_000;

export interface PresenceLeaseOptions {
  table: RedisLeaseTable;
  serverId: string;
  /**
   * Presence heartbeat in ms: a dead process's bridges are reported offline
   * within two of them (see PresenceLease).
   */
  heartbeatMs: number;
  store: StateStore;
  sessions: BridgeSessions;
  broadcaster: AppBroadcaster;
  logger: Logger;
}

/**
 * Keeps this process's presence lease alive and sweeps the bridges of
 * processes whose lease expired. The lease is renewed twice per heartbeat
 * and lives 1.5 heartbeats, so one missed renewal is survived with half a
 * heartbeat to spare. Expired leases are looked for four times per
 * heartbeat, so a dead process's bridges are found within 1.75 heartbeats
 * of its last renewal. The stated bound of 2 heartbeats leaves the rest
 * for the sweep itself. A process that was cut off from Redis waits one
 * TTL before sweeping.
 */
export class PresenceLease {
  private readonly timers: NodeJS.Timeout[] = [];
  private readonly logLimiter = new RepeatLimiter(10_000);
  private stopped = false;
  private sweeping: Promise<void> = Promise.resolve();
  /**
   * `performance.now()` of the first renewal since the last failed one, or
   * null while renewals fail. After an outage every process needs time to
   * renew its lease, so sweeping waits `sweepAfterMs`: otherwise live
   * processes would be swept for the outage's gap.
   */
  private renewingSince: number | null = null;
  /** A TTL from the start, and RECOVERY_TTLS of them once a renewal failed. */
  private sweepAfterMs: number;

  constructor(private readonly options: PresenceLeaseOptions) {
    this.sweepAfterMs = this.ttlMs;
  }

  /** Index of this process's bridges in the lease table, for BridgeSessions. */
  static connectionIndex(
    table: RedisLeaseTable,
    serverId: string,
  ): ConnectionIndex {
    return {
      track: (bridgeIds) => table.track(serverId, bridgeIds),
      untrack: (bridgeId) => table.untrack(serverId, bridgeId),
      scan: (cursor, count) => table.scanTracked(serverId, cursor, count),
    };
  }

  get ttlMs(): number {
    return this.options.heartbeatMs * 1.5;
  }

  /** Takes the lease, then renews it and checks for expired ones on timers. */
  async start(): Promise<void> {
    await this.renew();
    const { heartbeatMs } = this.options;
    this.repeat("renew", Math.max(1, Math.floor(heartbeatMs / 2)), () =>
      this.renew(),
    );
    this.repeat("sweep", Math.max(1, Math.floor(heartbeatMs / 4)), () =>
      this.sweepExpired(),
    );
  }

  /**
   * Stops renewing. The lease is dropped when every bridge was released;
   * otherwise it is left to expire, so that a sweep releases the rest.
   */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const timer of this.timers) clearTimeout(timer);
    await this.sweeping.catch(() => undefined);
    const { table, serverId, sessions, logger } = this.options;
    if (!sessions.idle) return;
    try {
      await table.drop(serverId);
    } catch (error) {
      logger.warn(
        { err: error },
        "could not drop the presence lease, leaving it to expire",
      );
    }
  }

  /**
   * Renews the lease at once and holds sweeps for RECOVERY_TTLS TTLs, after
   * this process's Redis connection came back. Redis may have come back
   * from an older copy whose leases have all expired. Every live process
   * must then renew its own before any of them may be swept. Otherwise a
   * process whose renewals did not fail during the restart sweeps the
   * others at its next check.
   */
  async afterReconnect(): Promise<void> {
    if (this.stopped) return;
    this.renewingSince = null;
    this.sweepAfterMs = RECOVERY_TTLS * this.ttlMs;
    try {
      await this.renew();
    } catch (error) {
      this.options.logger.warn(
        { err: error },
        "could not renew the presence lease after a Redis reconnect; the next renewal tries again",
      );
    }
  }

  private async renew(): Promise<void> {
    const { table, serverId, sessions, logger } = this.options;
    let result: RenewResult;
    try {
      result = await table.renew(serverId, this.ttlMs);
    } catch (error) {
      this.renewingSince = null;
      this.sweepAfterMs = RECOVERY_TTLS * this.ttlMs;
      presenceLeaseRenewals.inc({ result: "failed" });
      throw error;
    }
    presenceLeaseRenewals.inc({ result });
    this.renewingSince ??= performance.now();
    if (result === "renewed") return;
    if (result === "sweeping") {
      logger.warn(
        "presence lease expired and another server is sweeping this server's bridges; renewing after the sweep",
      );
      return;
    }
    if (sessions.count > 0) {
      logger.warn(
        { bridges: sessions.count },
        "presence lease was lost, checking every bridge claim again",
      );
    }
    await sessions.retrack();
    await sessions.revalidate();
  }

  private async sweepExpired(): Promise<void> {
    const { table, serverId } = this.options;
    if (
      this.renewingSince === null ||
      performance.now() - this.renewingSince < this.sweepAfterMs
    ) {
      return;
    }
    const expired = await table.listExpired(EXPIRED_PER_CHECK);
    for (const deadServerId of expired) {
      if (deadServerId === serverId || this.stopped) continue;
      this.sweeping = this.sweep(deadServerId);
      await this.sweeping;
    }
  }

  private async sweep(deadServerId: string): Promise<void> {
    const { table, logger } = this.options;
    const lockMs = Math.max(MIN_SWEEP_LOCK_MS, this.ttlMs * 4);
    if (!(await table.beginSweep(deadServerId, lockMs))) return;
    const startedAt = performance.now();
    let cursor = "0";
    let released = 0;
    do {
      const page = await table.scanTracked(deadServerId, cursor, SWEEP_BATCH);
      cursor = page.cursor;
      released += await this.releaseHeldBy(deadServerId, page.bridgeIds);
    } while (cursor !== "0");
    await table.endSweep(deadServerId);
    presenceSweptBridges.inc(released);
    logger.info(
      {
        deadServerId,
        released,
        durationMs: Math.round(performance.now() - startedAt),
      },
      "presence lease expired, bridges of that server marked offline",
    );
  }

  /** Releases each bridge still held by `deadServerId`; returns how many were released. */
  private async releaseHeldBy(
    deadServerId: string,
    bridgeIds: string[],
  ): Promise<number> {
    const { store, broadcaster } = this.options;
    if (bridgeIds.length === 0) return 0;
    const records = await store.getPresence(bridgeIds);
    const now = new Date();
    const results = await Promise.all(
      records.map(async ({ bridgeId, connection }) => {
        if (connection?.serverId !== deadServerId) return false;
        // The socket ID fences the release: a bridge that reconnected since
        // the read keeps its new connection.
        const released = await store.releaseConnection(
          bridgeId,
          connection.socketId,
          now,
        );
        if (released) {
          broadcaster.presence({
            bridgeId,
            online: false,
            lastSeen: now.toISOString(),
            epoch: connection.epoch,
          });
        }
        return released;
      }),
    );
    return results.filter(Boolean).length;
  }

  /** Runs `task` every `intervalMs`, never overlapping, logging failures (counted per 10 s). */
  private repeat(
    name: string,
    intervalMs: number,
    task: () => Promise<void>,
  ): void {
    const index = this.timers.length;
    const run = (): void => {
      task()
        .catch((error: unknown) => {
          const suppressed = this.logLimiter.admit(name);
          if (suppressed === null) return;
          this.options.logger.warn(
            { err: error, task: name, suppressed },
            "presence lease task failed",
          );
        })
        .finally(() => {
          if (this.stopped) return;
          const timer = setTimeout(run, intervalMs);
          timer.unref();
          this.timers[index] = timer;
        });
    };
    const timer = setTimeout(run, intervalMs);
    timer.unref();
    this.timers.push(timer);
  }
}
