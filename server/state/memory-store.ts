import type { Light } from "../../client-sdk/src/protocol.ts";
import { canonicalLight } from "./lights.ts";
import type {
  BridgeConnection,
  BridgePresenceRecord,
  BridgeStateRecord,
  ClaimResult,
  LightWrite,
  SocketRelease,
  StateStore,
  StoredCommandAnswer,
  WriteResult,
} from "./store.ts";

export interface MemoryStoreOptions {
  /** Milliseconds between sweeps that delete expired command answers (default 10 000). */
  sweepIntervalMs?: number;
}

interface BridgeRecord {
  /** Number of claims so far; 0 means the bridge never connected. */
  epoch: number;
  version: number;
  connection: { serverId: string; socketId: string } | null;
  /** The connection that the current one's claim replaced. */
  replaced: { serverId: string; socketId: string } | null;
  lastSeen: string | null;
  /** Canonical light documents keyed by light ID. */
  lights: Map<string, Light>;
}

interface CommandAnswerEntry {
  answer: StoredCommandAnswer;
  /** `performance.now()` time after which the entry is expired. */
  expiresAt: number;
}

const DEFAULT_SWEEP_INTERVAL_MS = 10_000;

/**
 * State store that keeps everything in this process. It suits a single relay
 * process only, and it loses all state (versions included) when the process restarts.
 * Reads return copies, so callers cannot change stored state by mutating them.
 */
export class MemoryStore implements StateStore {
  private readonly bridges = new Map<string, BridgeRecord>();
  private readonly commandAnswers = new Map<string, CommandAnswerEntry>();
  private readonly sweepTimer: NodeJS.Timeout;

  constructor(options: MemoryStoreOptions = {}) {
    const sweepIntervalMs =
      options.sweepIntervalMs ?? DEFAULT_SWEEP_INTERVAL_MS;
    if (!Number.isFinite(sweepIntervalMs) || sweepIntervalMs <= 0) {
      throw new RangeError(
        `invalid sweepIntervalMs ${sweepIntervalMs}: expected a positive number of milliseconds`,
      );
    }
    this.sweepTimer = setInterval(
      () => this.sweepCommandAnswers(),
      sweepIntervalMs,
    );
    // The sweep alone must not keep the process alive.
    this.sweepTimer.unref();
  }

  /** Number of remembered command answers, expired ones included until the next sweep. */
  get commandAnswerCount(): number {
    return this.commandAnswers.size;
  }

  async claimConnection(
    bridgeId: string,
    serverId: string,
    socketId: string,
    now: Date,
  ): Promise<ClaimResult> {
    const record = this.getOrCreateRecord(bridgeId);
    const previous = connectionOf(record);
    record.replaced = record.connection;
    record.epoch += 1;
    record.connection = { serverId, socketId };
    record.lastSeen = now.toISOString();
    return { epoch: record.epoch, previous };
  }

  async claimIfFree(
    bridgeId: string,
    serverId: string,
    socketId: string,
    now: Date,
    staleSocketId?: string,
  ): Promise<number | null> {
    const record = this.getOrCreateRecord(bridgeId);
    if (record.connection?.socketId === socketId) return record.epoch;
    if (
      record.connection !== null &&
      record.connection.socketId !== staleSocketId
    ) {
      return null;
    }
    return (await this.claimConnection(bridgeId, serverId, socketId, now))
      .epoch;
  }

  async releaseConnection(
    bridgeId: string,
    socketId: string,
    now: Date,
  ): Promise<boolean> {
    const record = this.bridges.get(bridgeId);
    if (record?.connection?.socketId !== socketId) return false;
    record.connection = null;
    record.replaced = null;
    record.lastSeen = now.toISOString();
    return true;
  }

  async releaseSocket(
    bridgeId: string,
    socketId: string,
    now: Date,
  ): Promise<SocketRelease> {
    const record = this.bridges.get(bridgeId);
    if (record?.connection?.socketId !== socketId) return { released: false };
    const { replaced } = record;
    record.connection = null;
    record.replaced = null;
    record.lastSeen = now.toISOString();
    return { released: true, epoch: record.epoch, replaced };
  }

  async getPresence(bridgeIds: string[]): Promise<BridgePresenceRecord[]> {
    return bridgeIds.map((bridgeId) => this.presenceOf(bridgeId));
  }

  async getState(bridgeId: string): Promise<BridgeStateRecord> {
    const record = this.bridges.get(bridgeId);
    const lights = record === undefined ? [] : [...record.lights.values()];
    return {
      ...this.presenceOf(bridgeId),
      version: record?.version ?? 0,
      lights: lights.map(canonicalLight).sort(compareById),
    };
  }

  async getLights(
    bridgeId: string,
    lightIds: string[],
  ): Promise<{ version: number; lights: (Light | null)[] }> {
    const record = this.bridges.get(bridgeId);
    const lights = lightIds.map((lightId) => {
      const light = record?.lights.get(lightId);
      return light === undefined ? null : canonicalLight(light);
    });
    return { version: record?.version ?? 0, lights };
  }

  async writeLights(bridgeId: string, write: LightWrite): Promise<WriteResult> {
    const record = this.bridges.get(bridgeId);
    // Only a claim creates a record, so a never-claimed bridge fences every write.
    if (record === undefined || record.epoch !== write.epoch) {
      return { status: "fenced" };
    }
    if (record.version !== write.expectedVersion) return { status: "conflict" };

    if (write.replaceAll) record.lights.clear();
    for (const light of write.lights) {
      record.lights.set(light.id, canonicalLight(light));
    }
    record.version += 1;
    return { status: "written", version: record.version };
  }

  async getCommandAnswer(
    bridgeId: string,
    commandId: string,
  ): Promise<StoredCommandAnswer | null> {
    const key = commandAnswerKey(bridgeId, commandId);
    const entry = this.commandAnswers.get(key);
    if (entry === undefined) return null;
    if (performance.now() >= entry.expiresAt) {
      this.commandAnswers.delete(key);
      return null;
    }
    return copyAnswer(entry.answer);
  }

  async putCommandAnswer(
    bridgeId: string,
    commandId: string,
    answer: StoredCommandAnswer,
    ttlMs: number,
  ): Promise<void> {
    if (!Number.isFinite(ttlMs) || ttlMs <= 0) {
      throw new RangeError(
        `invalid ttlMs ${ttlMs}: expected a positive number of milliseconds`,
      );
    }
    this.commandAnswers.set(commandAnswerKey(bridgeId, commandId), {
      answer: copyAnswer(answer),
      expiresAt: performance.now() + ttlMs,
    });
  }

  async ping(): Promise<void> {}

  /** Stops the sweep timer. Stored state stays readable until the store is dropped. */
  async close(): Promise<void> {
    clearInterval(this.sweepTimer);
  }

  private getOrCreateRecord(bridgeId: string): BridgeRecord {
    let record = this.bridges.get(bridgeId);
    if (record === undefined) {
      record = {
        epoch: 0,
        version: 0,
        connection: null,
        replaced: null,
        lastSeen: null,
        lights: new Map(),
      };
      this.bridges.set(bridgeId, record);
    }
    return record;
  }

  private presenceOf(bridgeId: string): BridgePresenceRecord {
    const record = this.bridges.get(bridgeId);
    return {
      bridgeId,
      connection: record === undefined ? null : connectionOf(record),
      epoch: record?.epoch ?? 0,
      lastSeen: record?.lastSeen ?? null,
    };
  }

  private sweepCommandAnswers(): void {
    const now = performance.now();
    for (const [key, entry] of this.commandAnswers) {
      if (now >= entry.expiresAt) this.commandAnswers.delete(key);
    }
  }
}

function connectionOf(record: BridgeRecord): BridgeConnection | null {
  if (record.connection === null) return null;
  return { ...record.connection, epoch: record.epoch };
}

/** Builds the map key of a command answer. Bridge IDs are hex digits, so keys cannot collide. */
function commandAnswerKey(bridgeId: string, commandId: string): string {
  return `${bridgeId} ${commandId}`;
}

function copyAnswer(answer: StoredCommandAnswer): StoredCommandAnswer {
  const copy: StoredCommandAnswer = answer.ok
    ? { ok: true, light: canonicalLight(answer.light) }
    : { ok: false, details: { ...answer.details } };
  if (answer.fingerprint !== undefined) copy.fingerprint = answer.fingerprint;
  return copy;
}

/** Orders lights by ID in UTF-16 code unit order, the same in every locale. */
function compareById(a: Light, b: Light): number {
  if (a.id < b.id) return -1;
  return a.id > b.id ? 1 : 0;
}
