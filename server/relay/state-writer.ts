import type { Light, LightChange } from "../../client-sdk/src/protocol.ts";
import { RelayError } from "../errors.ts";
import { stateWrites } from "../metrics/relay-metrics.ts";
import {
  applyChange,
  canonicalLight,
  lightsEqual,
  snapshotDiffers,
} from "../state/lights.ts";
import type { LightWrite, StateStore, WriteResult } from "../state/store.ts";
import type { AppBroadcaster } from "./broadcaster.ts";
import { KeyedQueue } from "./keyed-queue.ts";
import { LightCache } from "./light-cache.ts";

const MAX_WRITE_ATTEMPTS = 3;

export interface WriterSession {
  bridgeId: string;
  epoch: number;
}

/** Told of writes that the store rejected, and of snapshots it stored. */
export interface WriteListener {
  writeFailed(session: WriterSession): void;
  snapshotStored(session: WriterSession): void;
}

export interface ChangeResult {
  version: number;
  /** The stored documents of the lights named by the change, after the write. */
  lights: Light[];
}

function byId(a: Light, b: Light): number {
  if (a.id < b.id) return -1;
  if (a.id > b.id) return 1;
  return 0;
}

/**
 * Applies state writes of the bridges held by this process: snapshots,
 * changes, and command answers. Writes of one bridge run one at a time, so
 * its versions are assigned and broadcast in order; a write that changes
 * nothing keeps the version and is not broadcast. A change to lights it
 * read or wrote before skips the read: it writes against its cached copy,
 * and reads again only when that write conflicts.
 */
export class StateWriter {
  private readonly queue = new KeyedQueue();
  private readonly cache = new LightCache();

  constructor(
    private readonly store: StateStore,
    private readonly broadcaster: AppBroadcaster,
    private readonly listener?: WriteListener,
  ) {}

  /**
   * Drops the copies of all bridges' lights, after the connection to Redis
   * was lost. Redis may have lost acknowledged writes meanwhile, when a
   * replica was promoted before it received them. A change that matches
   * the copy would then be skipped, since no write reveals the conflict.
   */
  forgetCachedLights(): void {
    this.cache.clear();
  }

  /**
   * Resolves once the bridge's writes queued so far are done, those of
   * command answers read with the last packet included, which are queued a
   * tick after they are read. Failed writes count as done.
   */
  async afterQueuedWrites(bridgeId: string): Promise<void> {
    await new Promise<void>((resolve) => process.nextTick(resolve));
    await this.queue.run(bridgeId, () => Promise.resolve());
  }

  /** Returns true when the light is in this process's copy of the bridge's current state. */
  knowsLight(session: WriterSession, lightId: string): boolean {
    return this.cache.has(session.bridgeId, session.epoch, lightId);
  }

  /**
   * Replaces all of a bridge's lights; returns the version after the write.
   * `admit` runs in the write's turn, before it: a request limit checked
   * there leaves the write its place in the bridge's order.
   */
  applySnapshot(
    session: WriterSession,
    lights: Light[],
    admit?: () => Promise<void>,
  ): Promise<number> {
    const next = lights.map(canonicalLight).sort(byId);
    const stored = this.inTurn(session, admit, () =>
      this.retry(async () => {
        // Snapshots are rare, and idle bridges should cost no cache entry.
        this.cache.forget(session.bridgeId);
        const current = await this.store.getState(session.bridgeId);
        // A write would be fenced; one that changes nothing must be too.
        if (current.epoch !== session.epoch) throw fencedWrite(session);
        if (!snapshotDiffers(current.lights, next)) return current.version;
        const version = await this.write(session, {
          epoch: session.epoch,
          expectedVersion: current.version,
          replaceAll: true,
          lights: next,
        });
        this.broadcaster.snapshot({
          bridgeId: session.bridgeId,
          version,
          lights: next,
        });
        return version;
      }),
    );
    return this.tellListener(session, stored, true);
  }

  /**
   * Applies changes whole or not at all; an unknown light is `NOT_FOUND`.
   * `admit` runs in the write's turn, as for a snapshot.
   */
  applyChanges(
    session: WriterSession,
    changes: LightChange[],
    admit?: () => Promise<void>,
  ): Promise<ChangeResult> {
    const result = this.inTurn(session, admit, () =>
      this.retry(() => this.applyChangesNow(session, changes)),
    );
    return this.tellListener(session, result, false);
  }

  /**
   * Queues `write` behind the bridge's earlier writes, so that they are
   * applied in the order they were called, which is the order the bridge
   * sent them.
   */
  private inTurn<T>(
    session: WriterSession,
    admit: (() => Promise<void>) | undefined,
    write: () => Promise<T>,
  ): Promise<T> {
    return this.queue.run(session.bridgeId, async () => {
      await admit?.();
      return write();
    });
  }

  /**
   * Reports a write the store rejected, so that the bridge is asked for a
   * snapshot later. A fenced write, an unknown light or a stale epoch is
   * not a store failure, and the state stays right without one.
   */
  private async tellListener<T>(
    session: WriterSession,
    write: Promise<T>,
    snapshot: boolean,
  ): Promise<T> {
    try {
      const result = await write;
      if (snapshot) this.listener?.snapshotStored(session);
      return result;
    } catch (error) {
      if (
        error instanceof RelayError &&
        error.code === "UNAVAILABLE" &&
        !(error instanceof FencedWrite)
      ) {
        this.listener?.writeFailed(session);
      }
      throw error;
    }
  }

  private async applyChangesNow(
    session: WriterSession,
    changes: LightChange[],
  ): Promise<ChangeResult> {
    const ids = changes.map((change) => change.id);
    const current = await this.currentLights(session, ids);
    const merged = changes.map((change, index) => {
      const stored = current.lights[index];
      if (stored === null || stored === undefined) {
        throw new RelayError(
          "NOT_FOUND",
          `light ${JSON.stringify(change.id)} not found`,
        );
      }
      return { stored, next: applyChange(stored, change) };
    });
    const changed = merged
      .filter(({ stored, next }) => !lightsEqual(stored, next))
      .map(({ next }) => next);
    const lights = merged.map(({ next }) => next);
    if (changed.length === 0) return { version: current.version, lights };
    const version = await this.write(session, {
      epoch: session.epoch,
      expectedVersion: current.version,
      replaceAll: false,
      lights: changed,
    });
    this.cache.advance(
      session.bridgeId,
      session.epoch,
      current.version,
      version,
      changed,
    );
    this.broadcaster.lightsChanged({
      bridgeId: session.bridgeId,
      version,
      lights: changed,
    });
    return { version, lights };
  }

  /** Returns the version and the lights `ids` (null where unknown), from the cache when it has them all. */
  private async currentLights(
    session: WriterSession,
    ids: string[],
  ): Promise<{ version: number; lights: (Light | null)[] }> {
    const cached = this.cache.get(session.bridgeId, session.epoch, ids);
    if (cached !== undefined) return cached;
    const current = await this.store.getLights(session.bridgeId, ids);
    const known = current.lights.filter((light) => light !== null);
    this.cache.remember(
      session.bridgeId,
      session.epoch,
      current.version,
      known,
    );
    return current;
  }

  private async write(
    session: WriterSession,
    write: LightWrite,
  ): Promise<number> {
    let result: WriteResult;
    try {
      result = await this.store.writeLights(session.bridgeId, write);
    } catch (error) {
      // Redis may have run a write whose reply timed out. A change that
      // matches the copy would then be skipped while Redis has another value.
      this.cache.forget(session.bridgeId);
      throw error;
    }
    stateWrites.inc({
      kind: write.replaceAll ? "snapshot" : "change",
      result: result.status,
    });
    if (result.status === "written") return result.version;
    // The stored state differs from the cached copy, or the write was fenced.
    this.cache.forget(session.bridgeId);
    if (result.status === "fenced") throw fencedWrite(session);
    throw new WriteConflict();
  }

  /** Repeats a write whose read went stale (another writer raced it), a bounded number of times. */
  private async retry<T>(attempt: () => Promise<T>): Promise<T> {
    for (let count = 1; ; count += 1) {
      try {
        return await attempt();
      } catch (error) {
        if (!(error instanceof WriteConflict) || count >= MAX_WRITE_ATTEMPTS) {
          if (error instanceof WriteConflict) {
            throw new RelayError(
              "UNAVAILABLE",
              "state write conflicted repeatedly, retry later",
            );
          }
          throw error;
        }
      }
    }
  }
}

class WriteConflict extends Error {}

/** A write that a newer claim of the bridge fenced off. */
export class FencedWrite extends RelayError {}

function fencedWrite(session: WriterSession): FencedWrite {
  return new FencedWrite(
    "UNAVAILABLE",
    `bridge ${session.bridgeId} has a newer connection; this write was ignored`,
  );
}
