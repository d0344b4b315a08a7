import type { Namespace, Socket } from "socket.io";
import type { Logger } from "../logger.ts";
import type { ServerBus } from "../messaging/server-bus.ts";
import type {
  BridgeConnection,
  ClaimResult,
  SocketRelease,
  StateStore,
} from "../state/store.ts";
import type { AppBroadcaster } from "./broadcaster.ts";
import { RepeatLimiter } from "../logging/repeat-limiter.ts";
import { MAX_RECONNECT_DELAY_MS } from "../redis/clients.ts";
import {
  DeferredClaimChecks,
  type DeferredClaimCheck,
} from "./deferred-claim-checks.ts";
import { HandshakingSockets } from "./handshaking-sockets.ts";

/** A bridge connection held by this process. */
export interface BridgeSession {
  bridgeId: string;
  epoch: number;
  socket: Socket;
  /**
   * Time (`performance.now()`) at which this process claimed the bridge
   * again after Redis lost the claim, and sent `state:resync`. Cleared
   * once a snapshot of the bridge is stored.
   */
  resyncRequestedAt?: number | undefined;
}

/**
 * How long after `state:resync` a light missing from the store may still
 * be one that the bridge has, in ms. NOTE: a guess: the bridge sends its
 * snapshot at once, and this bounds the wait on one that never does.
 */
export const RESYNC_SNAPSHOT_WAIT_MS = 10_000;

/**
 * Returns true while `session` waits for the snapshot that revalidation
 * requested, so that a light missing from the store may only be missing
 * because Redis lost it.
 */
export function awaitsResyncSnapshot(
  session: BridgeSession,
  now = performance.now(),
): boolean {
  const requestedAt = session.resyncRequestedAt;
  return (
    requestedAt !== undefined && now - requestedAt < RESYNC_SNAPSHOT_WAIT_MS
  );
}

export const REPLACED_REASON = "a newer connection of this bridge took over";
export const RESYNC_REASON =
  "the relay lost its copy of this bridge's state; send a snapshot";

/** Claims checked per store round trip when revalidating after a Redis reconnect. */
const REVALIDATE_BATCH = 500;
/** Time between attempts to send releases that failed, in ms. */
const RELEASE_RETRY_MS = 1000;
/**
 * Maximum number of claim checks from other servers kept while Redis is
 * unavailable. NOTE: a guess, not measured. A check left out waits for
 * its requester's next request, one second later.
 */
const MAX_DEFERRED_CHECKS = 10_000;
/**
 * Age in ms after which a deferred claim check is dropped. Its requester
 * sends it again every second while the claim is unresolved, so an older
 * check is one that the requester no longer needs.
 */
const DEFERRED_CHECK_MAX_AGE_MS = 10_000;
/**
 * Time in ms from the first revalidation that finds a restored claim of a
 * gone socket of this process to the release of that claim. The bridge
 * may have moved to another relay after the copy was saved. That relay
 * takes the claim over once it reconnects and revalidates, and the bridge
 * then never reads offline. Its Redis clients retry at least every 5 s
 * (MAX_RECONNECT_DELAY_MS), and 2 s more are left for its revalidation
 * and check. NOTE: the 2 s are an estimate. A relay that takes longer
 * finds the claim released, and its bridge reads offline until it claims
 * the bridge again.
 */
export const RESTORED_CLAIM_GRACE_MS = MAX_RECONNECT_DELAY_MS + 2000;

/**
 * The set of bridges this process may hold, which a sweep goes through
 * when this process's presence lease expires. Absent in a single process.
 */
export interface ConnectionIndex {
  track(bridgeIds: string[]): Promise<void>;
  untrack(bridgeId: string): Promise<void>;
  /** Returns one page of the tracked bridge IDs. The cursor is "0" after the last page. */
  scan(
    cursor: string,
    count: number,
  ): Promise<{ cursor: string; bridgeIds: string[] }>;
}

/**
 * Tracks the bridge sockets of this process and their claims in the shared
 * store. The newest connection of a bridge wins anywhere in the cluster:
 * claiming tells the previous holder, local or on another process, to send
 * `session:replaced` and disconnect its socket.
 */
export class BridgeSessions {
  private readonly sessions = new Map<string, BridgeSession>();
  private readonly handshaking = new HandshakingSockets();
  private readonly releasing = new Set<Promise<void>>();
  /** Claims in flight per bridge ID, so a release does not untrack a bridge being claimed again. */
  private readonly claiming = new Map<string, number>();
  /** Sessions whose release failed, retried every second and on revalidation. */
  private readonly unreleased = new Map<string, BridgeSession>();
  /** Bridge IDs by socket ID of failed claims whose undoing failed too, retried every second. */
  private readonly abandoned = new Map<string, string>();
  /** Replaced connections by bridge ID whose server could not be asked to claim again. */
  private readonly owedReclaims = new Map<
    string,
    { serverId: string; socketId: string }
  >();
  /** Claim checks of other servers that failed on Redis, run again on revalidation. */
  private readonly deferredChecks = new DeferredClaimChecks(
    MAX_DEFERRED_CHECKS,
    DEFERRED_CHECK_MAX_AGE_MS,
  );
  private readonly deferredChecksFullLog = new RepeatLimiter(10_000);
  /**
   * Restored claims of gone sockets of this process by bridge ID, each with
   * the `performance.now()` time at which it is released.
   */
  private readonly goneClaims = new Map<
    string,
    { socketId: string; releaseAt: number }
  >();
  private goneClaimsRelease: NodeJS.Timeout | undefined;
  private readonly goneClaimsFailureLog = new RepeatLimiter(10_000);
  private releaseRetry: NodeJS.Timeout | undefined;
  /** Releases sent again and not finished, which `unreleased` and `abandoned` no longer list. */
  private retriedReleases = 0;
  private retriesStopped = false;
  private revalidation: Promise<void> = Promise.resolve();

  constructor(
    private readonly store: StateStore,
    private readonly bus: ServerBus,
    private readonly broadcaster: AppBroadcaster,
    private readonly bridges: Namespace,
    private readonly logger: Logger,
    private readonly index?: ConnectionIndex,
    private readonly restoredClaimGraceMs = RESTORED_CLAIM_GRACE_MS,
  ) {}

  get(bridgeId: string): BridgeSession | undefined {
    return this.sessions.get(bridgeId);
  }

  /**
   * Returns true while this process holds a restored claim of `bridgeId`
   * that names a gone socket of its own, for another relay to take over.
   * The bridge may be connected there.
   */
  holdsRestoredClaim(bridgeId: string): boolean {
    return this.goneClaims.has(bridgeId);
  }

  get count(): number {
    return this.sessions.size;
  }

  /** True when this process holds no bridge and owes no release. */
  get idle(): boolean {
    return (
      this.sessions.size === 0 &&
      this.goneClaims.size === 0 &&
      this.claiming.size === 0 &&
      this.unreleased.size === 0 &&
      this.abandoned.size === 0 &&
      this.releasing.size === 0 &&
      this.retriedReleases === 0
    );
  }

  /**
   * Claims the bridge for `socket`, replacing any older connection. The
   * caller calls `connected` once the socket connects.
   */
  async claim(bridgeId: string, socket: Socket): Promise<BridgeSession> {
    this.claiming.set(bridgeId, (this.claiming.get(bridgeId) ?? 0) + 1);
    this.handshaking.begin(socket);
    try {
      return await this.claimTracked(bridgeId, socket);
    } catch (error) {
      this.handshaking.end(socket);
      throw error;
    } finally {
      const remaining = (this.claiming.get(bridgeId) ?? 1) - 1;
      if (remaining === 0) this.claiming.delete(bridgeId);
      else this.claiming.set(bridgeId, remaining);
    }
  }

  private async claimTracked(
    bridgeId: string,
    socket: Socket,
  ): Promise<BridgeSession> {
    // Tracked before the claim, so that if this process dies right after
    // claiming, the sweep of its lease still finds the bridge.
    await this.index?.track([bridgeId]);
    this.unreleased.delete(bridgeId);
    const now = new Date();
    let claim: ClaimResult;
    try {
      claim = await this.store.claimConnection(
        bridgeId,
        this.bus.serverId,
        socket.id,
        now,
      );
    } catch (error) {
      this.abandon(bridgeId, socket.id);
      throw error;
    }
    const { epoch, previous } = claim;
    const session: BridgeSession = { bridgeId, epoch, socket };
    this.sessions.set(bridgeId, session);
    if (previous === null) {
      this.broadcaster.presence({
        bridgeId,
        online: true,
        lastSeen: now.toISOString(),
        epoch,
      });
    } else if (previous.socketId !== socket.id) {
      await this.replace(bridgeId, previous.serverId, previous.socketId);
    }
    return session;
  }

  /**
   * Releases the claim when `session` is still current, and reports the
   * bridge offline once `lastWrites` are done, so that apps get the
   * bridge's last changes before its offline presence.
   */
  release(
    session: BridgeSession,
    lastWrites: Promise<void> = Promise.resolve(),
  ): Promise<void> {
    const releasing = this.releaseNow(session, false, lastWrites);
    this.trackRelease(releasing);
    return releasing;
  }

  /** Keeps `release` among the releases in flight, which `idle` and `settleReleases` read, until it settles. */
  private trackRelease(release: Promise<void>): void {
    this.releasing.add(release);
    void release
      .catch(() => undefined)
      .finally(() => this.releasing.delete(release));
  }

  /**
   * Undoes a claim that failed. A claim that timed out may still run once
   * Redis answers again, and would show the refused socket's bridge online
   * with no socket behind it. The release follows the claim on the same
   * Redis connection, so it runs after it. When the release fails as well,
   * it is sent again every second until Redis answers it.
   */
  private abandon(bridgeId: string, socketId: string): void {
    this.trackRelease(this.releaseAbandonedOrOwe(bridgeId, socketId));
  }

  /** Releases a failed claim, or keeps it owed and schedules the next attempt. */
  private async releaseAbandonedOrOwe(
    bridgeId: string,
    socketId: string,
  ): Promise<void> {
    try {
      await this.releaseStaleClaim(
        bridgeId,
        socketId,
        "released a claim that Redis ran after the handshake gave up on it",
        { untrack: false },
      );
    } catch (error) {
      this.abandoned.set(socketId, bridgeId);
      this.scheduleReleaseRetry();
      throw error;
    }
  }

  /**
   * Sends the owed releases again in a second. A release that failed while
   * the connection stayed up (Redis rejected the write, or did not answer
   * in time) would otherwise wait for a reconnect, with the bridge online.
   */
  private scheduleReleaseRetry(): void {
    if (this.releaseRetry !== undefined || this.retriesStopped) return;
    this.releaseRetry = setTimeout(() => {
      this.releaseRetry = undefined;
      void this.retryReleases();
    }, RELEASE_RETRY_MS);
    this.releaseRetry.unref();
  }

  /** Sends every owed release of a failed claim again; returns how many failed. */
  private async retryAbandoned(): Promise<number> {
    const owed = [...this.abandoned];
    this.abandoned.clear();
    this.retriedReleases += owed.length;
    const results = await Promise.allSettled(
      owed.map(([socketId, bridgeId]) =>
        this.releaseAbandonedOrOwe(bridgeId, socketId).finally(() => {
          this.retriedReleases -= 1;
        }),
      ),
    );
    return results.filter((result) => result.status === "rejected").length;
  }

  /**
   * Tells the server of the connection that an undone claim had replaced
   * to claim the bridge again. That socket may still be open: without a
   * claim it is fenced and its bridge shows offline until it reconnects.
   */
  private async askToReclaim(
    bridgeId: string,
    replaced: { serverId: string; socketId: string },
  ): Promise<void> {
    const { serverId, socketId } = replaced;
    try {
      if (serverId === this.bus.serverId) {
        await this.reclaim(bridgeId, socketId);
      } else {
        await this.bus.send(serverId, { type: "reclaim", bridgeId, socketId });
      }
    } catch (error) {
      // The release succeeded, so only the request is sent again.
      this.owedReclaims.set(bridgeId, replaced);
      this.scheduleReleaseRetry();
      this.logger.warn(
        { err: error, bridgeId, serverId, socketId },
        "could not ask the previous server to claim a bridge again",
      );
    }
  }

  /** Sends every owed request to claim again once more. */
  private async retryReclaims(): Promise<void> {
    const owed = [...this.owedReclaims];
    this.owedReclaims.clear();
    await Promise.all(
      owed.map(([bridgeId, replaced]) => this.askToReclaim(bridgeId, replaced)),
    );
  }

  /**
   * Claims the bridge again for local socket `socketId` when the store
   * shows no connection: an undone claim had replaced it. With
   * `staleSocketId`, a gone socket that another server confirmed, the
   * claim of that socket is taken over in one step, so the bridge never
   * reads offline. Disconnects the socket when a newer connection holds
   * the bridge, and does nothing when the socket is gone.
   */
  async reclaim(
    bridgeId: string,
    socketId: string,
    staleSocketId?: string,
  ): Promise<void> {
    const session = this.sessions.get(bridgeId);
    if (session?.socket.id !== socketId) return;
    const [record] = await this.store.getPresence([bridgeId]);
    const stored = record?.connection ?? null;
    if (
      staleSocketId !== undefined &&
      stored?.socketId === staleSocketId &&
      this.sessions.get(bridgeId) === session
    ) {
      await this.claimAgain(
        session,
        stored,
        "bridge claim named a gone socket of another server, which confirmed it; took it over and asking for a snapshot",
      );
      return;
    }
    await this.revalidateOne(session, stored);
  }

  /**
   * Stops sending owed releases again, once Redis is about to close. The
   * restored claims still waiting for their release are left to the sweep
   * of this process's lease, which `idle` keeps from being dropped.
   */
  stopRetries(): void {
    this.retriesStopped = true;
    clearTimeout(this.releaseRetry);
    this.releaseRetry = undefined;
    clearTimeout(this.goneClaimsRelease);
    this.goneClaimsRelease = undefined;
  }

  /** Resolves once every release in flight has finished (before Redis is closed on shutdown). */
  async settleReleases(): Promise<void> {
    await Promise.allSettled([...this.releasing]);
  }

  /**
   * Releases `session`'s claim and reports the bridge offline. `retried`
   * marks a release sent again after a failure: an earlier attempt that
   * timed out may have run in Redis, and this one then finds nothing to
   * release.
   */
  private async releaseNow(
    session: BridgeSession,
    retried = false,
    lastWrites: Promise<void> = Promise.resolve(),
  ): Promise<void> {
    if (this.sessions.get(session.bridgeId) === session) {
      this.sessions.delete(session.bridgeId);
    }
    await lastWrites;
    const now = new Date();
    let released: boolean;
    try {
      released = await this.store.releaseConnection(
        session.bridgeId,
        session.socket.id,
        now,
      );
    } catch (error) {
      // The bridge would stay online in the store, under a live lease, so
      // the release is retried once Redis is back.
      if (!this.isLocal(session.bridgeId)) {
        this.unreleased.set(session.bridgeId, session);
        this.scheduleReleaseRetry();
      }
      throw error;
    }
    // Untracked whether or not this release won: a bridge taken over by
    // another process is that process's to track. A bridge claimed again
    // here meanwhile stays tracked, and the index commands go out in call
    // order on one Redis connection, so a later claim's track follows this.
    if (!this.isLocal(session.bridgeId)) {
      await this.index?.untrack(session.bridgeId);
    }
    if (released) {
      this.broadcaster.presence({
        bridgeId: session.bridgeId,
        online: false,
        lastSeen: now.toISOString(),
        epoch: session.epoch,
      });
    } else if (retried) {
      await this.reportIfOffline(session.bridgeId);
    }
  }

  /**
   * Sends the offline presence event of a bridge that no socket holds. A
   * retried release calls it, because the earlier attempt that Redis ran
   * sent no event.
   */
  private async reportIfOffline(bridgeId: string): Promise<void> {
    try {
      const [record] = await this.store.getPresence([bridgeId]);
      if (record === undefined || record.connection !== null) return;
      this.broadcaster.presence({
        bridgeId,
        online: false,
        lastSeen: record.lastSeen,
        epoch: record.epoch,
      });
    } catch (error) {
      this.logger.warn(
        { err: error, bridgeId },
        "could not read the presence of a released bridge; subscribed apps may still see it online",
      );
    }
  }

  /**
   * Checks every local bridge's claim against the store, after Redis came
   * back from an outage. A lost claim (Redis restarted empty) is made
   * again and the bridge is sent `state:resync`, so it resends its lights.
   * A claim of another open socket disconnects the local one. A claim that
   * names another server is checked by that server first.
   */
  revalidate(): Promise<void> {
    // Runs one at a time, because a reconnect and a restored lease can ask at once.
    const next = this.revalidation.then(() => this.revalidateAll());
    this.revalidation = next.catch(() => undefined);
    return next;
  }

  /** Adds every local bridge to the connection index again, after the index was lost. */
  async retrack(): Promise<void> {
    const bridgeIds = [...this.sessions.keys()];
    for (let start = 0; start < bridgeIds.length; start += REVALIDATE_BATCH) {
      await this.index?.track(bridgeIds.slice(start, start + REVALIDATE_BATCH));
    }
  }

  private isLocal(bridgeId: string): boolean {
    return this.sessions.has(bridgeId) || this.claiming.has(bridgeId);
  }

  private async revalidateAll(): Promise<void> {
    await this.retryReleases();
    await this.runDeferredChecks();
    const sessions = [...this.sessions.values()];
    for (let start = 0; start < sessions.length; start += REVALIDATE_BATCH) {
      const batch = sessions.slice(start, start + REVALIDATE_BATCH);
      const records = await this.store.getPresence(
        batch.map((session) => session.bridgeId),
      );
      await Promise.all(
        batch.map((session, index) =>
          this.revalidateOne(session, records[index]?.connection ?? null),
        ),
      );
    }
    await this.holdGoneLocalClaims();
  }

  /**
   * Finds the claims that name this process with a socket it does not
   * have, which Redis data restored from an older copy brings back after
   * the bridge disconnected, and releases each one `restoredClaimGraceMs`
   * after the first revalidation that found it. No session checks them,
   * and this process's live lease keeps a sweep away, so the bridges would
   * read online for as long as it lives. The connection index, restored
   * from the same copy, lists the bridges to read. The grace lets a relay
   * that the bridge moved to reconnect and take the claim over, so that
   * the bridge does not read offline meanwhile. A later revalidation does
   * not extend the grace of a claim already held, so that a closed bridge
   * reads online for at most one grace.
   */
  private async holdGoneLocalClaims(): Promise<void> {
    if (this.index === undefined) return;
    const releaseAt = performance.now() + this.restoredClaimGraceMs;
    let found = 0;
    let cursor = "0";
    do {
      const page = await this.index.scan(cursor, REVALIDATE_BATCH);
      cursor = page.cursor;
      // Local bridges were checked above, with their sessions.
      const bridgeIds = page.bridgeIds.filter((id) => !this.isLocal(id));
      if (bridgeIds.length === 0) continue;
      const records = await this.store.getPresence(bridgeIds);
      for (const { bridgeId, connection } of records) {
        if (connection === null || !this.isGoneLocalSocket(connection)) {
          continue;
        }
        const { socketId } = connection;
        if (this.goneClaims.get(bridgeId)?.socketId === socketId) continue;
        this.goneClaims.set(bridgeId, { socketId, releaseAt });
        found += 1;
      }
    } while (cursor !== "0");
    if (found === 0) return;
    this.logger.info(
      { claims: found, graceMs: this.restoredClaimGraceMs },
      "found restored claims of gone sockets of this process, after Redis data was replaced; releasing them after a grace for other relays to take them over",
    );
    this.scheduleGoneClaimsRelease();
  }

  /** Sets the release of `goneClaims` to run when the first of them is due. */
  private scheduleGoneClaimsRelease(): void {
    if (this.retriesStopped) return;
    let firstReleaseAt = Infinity;
    for (const { releaseAt } of this.goneClaims.values()) {
      firstReleaseAt = Math.min(firstReleaseAt, releaseAt);
    }
    clearTimeout(this.goneClaimsRelease);
    this.goneClaimsRelease = undefined;
    if (firstReleaseAt === Infinity) return;
    const delayMs = Math.max(0, firstReleaseAt - performance.now());
    this.goneClaimsRelease = setTimeout(() => {
      this.goneClaimsRelease = undefined;
      this.trackRelease(this.releaseGoneClaims());
    }, delayMs);
    this.goneClaimsRelease.unref();
  }

  /**
   * Releases the claims in `goneClaims` that are due, fenced by socket ID,
   * so a claim that another relay took over is kept. Claims whose release
   * failed are released again in a second.
   */
  private async releaseGoneClaims(): Promise<void> {
    const now = performance.now();
    const claims: [string, string][] = [];
    for (const [bridgeId, { socketId, releaseAt }] of this.goneClaims) {
      if (releaseAt > now) continue;
      claims.push([bridgeId, socketId]);
      this.goneClaims.delete(bridgeId);
    }
    const failed: [string, string][] = [];
    let firstError: unknown;
    for (let start = 0; start < claims.length; start += REVALIDATE_BATCH) {
      const batch = claims.slice(start, start + REVALIDATE_BATCH);
      await Promise.all(
        batch.map(async ([bridgeId, socketId]) => {
          try {
            await this.releaseStaleClaim(
              bridgeId,
              socketId,
              "released a claim of a gone socket of this process, after Redis data was replaced and no other relay took it over",
              { untrack: true },
            );
          } catch (error) {
            firstError ??= error;
            failed.push([bridgeId, socketId]);
          }
        }),
      );
    }
    const retryAt = performance.now() + RELEASE_RETRY_MS;
    for (const [bridgeId, socketId] of failed) {
      if (this.goneClaims.has(bridgeId)) continue;
      this.goneClaims.set(bridgeId, { socketId, releaseAt: retryAt });
    }
    if (failed.length > 0) {
      const suppressed = this.goneClaimsFailureLog.admit("failed");
      if (suppressed !== null) {
        this.logger.warn(
          { err: firstError, failed: failed.length, suppressed },
          "could not release restored claims of gone sockets of this process, retrying in 1 s",
        );
      }
    }
    this.scheduleGoneClaimsRelease();
  }

  /**
   * Releases the claim of `socketId`, a socket of this process that no
   * connection uses. Then requests that the server of the connection that
   * this claim had replaced claim the bridge again, because that
   * connection's socket may still be open. With `untrack`, a released
   * bridge that this process does not hold leaves the connection index
   * before that request.
   */
  private async releaseStaleClaim(
    bridgeId: string,
    socketId: string,
    message: string,
    options: { untrack: boolean },
  ): Promise<void> {
    const release = await this.releaseStaleSocket(bridgeId, socketId, message);
    if (!release.released) return;
    if (options.untrack && !this.isLocal(bridgeId)) {
      await this.index?.untrack(bridgeId);
    }
    if (release.replaced !== null) {
      await this.askToReclaim(bridgeId, release.replaced);
    }
  }

  private async retryReleases(): Promise<void> {
    const pending = [...this.unreleased.values()];
    this.unreleased.clear();
    const abandoned = this.abandoned.size;
    this.retriedReleases += pending.length;
    const [results, abandonedFailed] = await Promise.all([
      Promise.allSettled(
        pending.map((session) =>
          this.releaseNow(session, true).finally(() => {
            this.retriedReleases -= 1;
          }),
        ),
      ),
      this.retryAbandoned(),
      this.retryReclaims(),
    ]);
    const failed =
      results.filter((result) => result.status === "rejected").length +
      abandonedFailed;
    const retried = pending.length + abandoned;
    // Logged once some succeed, not every second while Redis stays down.
    if (retried > failed) {
      this.logger.info(
        { retried, failed },
        "retried bridge releases that had failed",
      );
    }
  }

  private async revalidateOne(
    session: BridgeSession,
    stored: BridgeConnection | null,
  ): Promise<void> {
    if (this.sessions.get(session.bridgeId) !== session) return;
    const ownClaim = stored?.socketId === session.socket.id;
    if (ownClaim && stored?.epoch === session.epoch) return;
    if (stored === null || ownClaim) {
      await this.claimAgain(session, stored, undefined);
      return;
    }
    if (stored.serverId !== this.bus.serverId) {
      await this.askHolderToCheck(session, stored);
      return;
    }
    if (this.holdsSocket(stored.socketId)) {
      this.disconnectReplaced(session.bridgeId, session.socket.id);
      return;
    }
    await this.claimAgain(
      session,
      stored,
      "bridge claim named a socket of this process that is gone, after Redis data was replaced; took it over and asking for a snapshot",
    );
  }

  /**
   * Claims the bridge again for `session` and asks the bridge to resync.
   * With a `takeOverMessage`, the claim of `stored`'s socket, which is
   * gone, is replaced. Otherwise only a free bridge is claimed, or one that
   * `session`'s own socket holds at another epoch.
   */
  private async claimAgain(
    session: BridgeSession,
    stored: BridgeConnection | null,
    takeOverMessage: string | undefined,
  ): Promise<void> {
    const now = new Date();
    // A connection that claimed the bridge since the presence read is newer
    // than this socket, so the claim fails. A claim of this very socket at
    // another epoch comes from Redis data restored from an older copy, and
    // is kept at its epoch.
    const epoch = await this.store.claimIfFree(
      session.bridgeId,
      this.bus.serverId,
      session.socket.id,
      now,
      takeOverMessage === undefined ? undefined : stored?.socketId,
    );
    if (epoch === null) {
      this.disconnectReplaced(session.bridgeId, session.socket.id);
      return;
    }
    const previousEpoch = session.epoch;
    session.epoch = epoch;
    this.broadcaster.presence({
      bridgeId: session.bridgeId,
      online: true,
      lastSeen: now.toISOString(),
      epoch,
    });
    this.logger.info(
      {
        bridgeId: session.bridgeId,
        socketId: session.socket.id,
        epoch,
        previousEpoch,
        storedServerId: stored?.serverId,
        storedSocketId: stored?.socketId,
      },
      takeOverMessage ?? revalidationMessage(stored),
    );
    session.resyncRequestedAt = performance.now();
    session.socket.emit("state:resync", { reason: RESYNC_REASON });
  }

  /**
   * Asks the server that `stored` names whether it has that socket, rather
   * than taking the claim for a newer connection, because Redis data
   * restored from an older copy names sockets that may be gone. That server
   * replies with a `replace` or `reclaim` message. With `takeOver`, this
   * server offers to take a stale claim over itself, so that the other
   * server need not release it first and the bridge never reads offline.
   * An epoch lower than the session's does not prove the claim stale:
   * epochs start again at 1 when Redis restarts empty.
   */
  private async askHolderToCheck(
    session: BridgeSession,
    stored: BridgeConnection,
  ): Promise<void> {
    const { bridgeId } = session;
    const requester = {
      serverId: this.bus.serverId,
      socketId: session.socket.id,
    };
    let received: boolean;
    try {
      received = await this.bus.send(stored.serverId, {
        type: "checkClaim",
        bridgeId,
        socketId: stored.socketId,
        requester,
        takeOver: true,
      });
    } catch (error) {
      // The session is kept, because disconnecting it would stop the bridge
      // for good if the claim is stale.
      this.recheckLater(bridgeId, requester);
      this.logger.warn(
        { err: error, bridgeId, serverId: stored.serverId },
        "could not ask the server of a bridge claim to check it, retrying in 1 s",
      );
      return;
    }
    if (received || !this.bus.countsReceivers) {
      // That server's reply can be lost, or its check can fail when its
      // Redis connection comes back after its subscriber. So the claim is
      // read again every second until it names this socket or the socket
      // is replaced.
      this.recheckLater(bridgeId, requester);
      return;
    }
    // No process listens as that server, so the claim names no live socket
    // there. NOTE: a server whose subscriber is reconnecting receives
    // nothing either, and its socket may be open. That server then finds
    // this claim on its own revalidation and asks this one to check it.
    await this.claimAgain(
      session,
      stored,
      "bridge claim named a server that does not listen, after Redis data was replaced; took it over and asking for a snapshot",
    );
  }

  /** Revalidates the session of local socket `requester.socketId` again in a second. */
  private recheckLater(
    bridgeId: string,
    requester: { serverId: string; socketId: string },
  ): void {
    this.owedReclaims.set(bridgeId, requester);
    this.scheduleReleaseRetry();
  }

  /**
   * Checks a claim of local socket `socketId` that `requester`'s server
   * found for its own session of `bridgeId`. When the socket is here, the
   * requester's socket is replaced, as a newer connection's claim does.
   * Otherwise, with `takeOver`, the requester is asked to take the stale
   * claim over, and the claim is left as it is. Without it (a check from
   * an older relay), the stale claim is released and the requester is
   * asked to claim the bridge again. When the message or the release
   * fails on Redis, the check is kept and run again on the next
   * revalidation.
   */
  async checkClaim(
    bridgeId: string,
    socketId: string,
    requester: { serverId: string; socketId: string },
    takeOver = false,
  ): Promise<void> {
    if (this.holdsSocket(socketId)) {
      await this.replace(bridgeId, requester.serverId, requester.socketId);
      return;
    }
    try {
      if (takeOver) {
        await this.askToTakeOver(bridgeId, socketId, requester);
        return;
      }
      await this.releaseStaleSocket(
        bridgeId,
        socketId,
        "released a claim of a gone socket that another server found after Redis data was replaced",
      );
    } catch (error) {
      this.deferCheck({ bridgeId, socketId, requester, takeOver }, error);
      return;
    }
    await this.askToReclaim(bridgeId, requester);
  }

  /**
   * Tells `requester`'s server to take over the claim of `staleSocketId`,
   * a socket of this process that is gone, for its socket. The message
   * goes out on the main Redis connection, so it fails while that
   * connection is down, even though the check arrived.
   */
  private async askToTakeOver(
    bridgeId: string,
    staleSocketId: string,
    requester: { serverId: string; socketId: string },
  ): Promise<void> {
    await this.bus.send(requester.serverId, {
      type: "reclaim",
      bridgeId,
      socketId: requester.socketId,
      staleSocketId,
    });
    this.logger.info(
      { bridgeId, staleSocketId, requester },
      "bridge claim that another server found names a gone socket of this process, after Redis data was replaced; asked that server to take it over",
    );
  }

  /**
   * Keeps a claim check whose release or reply failed until revalidation,
   * which runs once this process's Redis connections are ready again. A
   * check can arrive over the subscriber connection before the main
   * connection is back. Without the deferral, the requester would wait for
   * its next request, up to a second, after this process's Redis is back.
   */
  private deferCheck(check: DeferredClaimCheck, error: unknown): void {
    const { bridgeId, socketId, requester } = check;
    const result = this.deferredChecks.add(check);
    if (result === "added") {
      this.logger.warn(
        { err: error, bridgeId, socketId, requester },
        "could not check a bridge claim that another server asked about, checking it once Redis is back",
      );
      return;
    }
    if (result === "replaced") return;
    const suppressed = this.deferredChecksFullLog.admit("full");
    if (suppressed === null) return;
    this.logger.warn(
      {
        err: error,
        bridgeId,
        requester,
        maxDeferredChecks: MAX_DEFERRED_CHECKS,
        suppressed,
      },
      "could not check a bridge claim and too many checks wait for Redis; the requester sends it again in 1 s",
    );
  }

  /** Runs the claim checks that failed on Redis, in batches. */
  private async runDeferredChecks(): Promise<void> {
    const checks = this.deferredChecks.takeAll();
    if (checks.length === 0) return;
    this.logger.info(
      { checks: checks.length },
      "running bridge claim checks that waited for Redis",
    );
    for (let start = 0; start < checks.length; start += REVALIDATE_BATCH) {
      const batch = checks.slice(start, start + REVALIDATE_BATCH);
      await Promise.all(
        batch.map(({ bridgeId, socketId, requester, takeOver }) =>
          this.checkClaim(bridgeId, socketId, requester, takeOver),
        ),
      );
    }
  }

  /**
   * Releases the claim of `socketId`, which no connection uses, and reports
   * the bridge offline when it was released.
   */
  private async releaseStaleSocket(
    bridgeId: string,
    socketId: string,
    message: string,
  ): Promise<SocketRelease> {
    const now = new Date();
    const release = await this.store.releaseSocket(bridgeId, socketId, now);
    if (!release.released) return release;
    this.logger.warn({ bridgeId, socketId }, message);
    this.broadcaster.presence({
      bridgeId,
      online: false,
      lastSeen: now.toISOString(),
      epoch: release.epoch,
    });
    return release;
  }

  /**
   * Returns true when `connection` names a socket of this process that is
   * neither connected nor in its handshake.
   */
  private isGoneLocalSocket(connection: BridgeConnection): boolean {
    return (
      connection.serverId === this.bus.serverId &&
      !this.holdsSocket(connection.socketId)
    );
  }

  /** Returns true when socket `socketId` of this process is connected or in its handshake. */
  private holdsSocket(socketId: string): boolean {
    return this.bridges.sockets.has(socketId) || this.handshaking.has(socketId);
  }

  /**
   * Ends the handshake of `socket`, which claimed `bridgeId`, and
   * disconnects it when a newer connection replaced it meanwhile.
   */
  connected(bridgeId: string, socket: Socket): void {
    if (this.handshaking.end(socket)) {
      this.disconnectReplaced(bridgeId, socket.id);
    }
  }

  /**
   * Disconnects a local socket that a newer connection replaced. A socket
   * still in its handshake is disconnected once it connects.
   */
  disconnectReplaced(bridgeId: string, socketId: string): void {
    const socket = this.bridges.sockets.get(socketId);
    if (socket === undefined && this.handshaking.markReplaced(socketId)) {
      this.logger.info(
        { bridgeId, socketId },
        "bridge connection replaced during its handshake, disconnecting it once connected",
      );
      return;
    }
    if (socket === undefined) {
      this.logger.debug(
        { bridgeId, socketId },
        "replaced socket is already gone",
      );
      return;
    }
    this.logger.info(
      { bridgeId, socketId },
      "bridge connection replaced by a newer one",
    );
    socket.emit("session:replaced", { reason: REPLACED_REASON });
    socket.disconnect(true);
  }

  private async replace(
    bridgeId: string,
    serverId: string,
    socketId: string,
  ): Promise<void> {
    if (serverId === this.bus.serverId) {
      this.disconnectReplaced(bridgeId, socketId);
      return;
    }
    try {
      await this.bus.send(serverId, { type: "replace", bridgeId, socketId });
    } catch (error) {
      this.logger.warn(
        { err: error, bridgeId, serverId, socketId },
        "could not tell the previous server to close a replaced bridge socket",
      );
    }
  }
}

/** Returns the log message of a claim made again on revalidation. */
function revalidationMessage(stored: BridgeConnection | null): string {
  if (stored === null) return "bridge claim was lost, asking for a snapshot";
  return "bridge claim is at another epoch after Redis data was replaced, asking for a snapshot";
}
