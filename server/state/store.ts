import type { Light } from "../../client-sdk/src/protocol.ts";

/** The socket that currently holds a bridge, fenced by a per-bridge epoch. */
export interface BridgeConnection {
  /** ID of the relay process (worker) that holds the socket. */
  serverId: string;
  socketId: string;
  /** Incremented by every claim; writes carry it so a replaced socket's late writes fail. */
  epoch: number;
}

export interface BridgePresenceRecord {
  bridgeId: string;
  /** Null when no socket holds the bridge anywhere. */
  connection: BridgeConnection | null;
  /** Epoch of the current or last connection, 0 for a bridge never claimed. */
  epoch: number;
  /** ISO 8601 UTC time of the last connection or disconnection, or null. */
  lastSeen: string | null;
}

export interface BridgeStateRecord extends BridgePresenceRecord {
  version: number;
  lights: Light[];
}

export interface ClaimResult {
  epoch: number;
  /** The connection this claim replaced, or null when the bridge was offline. */
  previous: BridgeConnection | null;
}

export interface LightWrite {
  /** Epoch of the connection that writes; a newer claim makes the write `fenced`. */
  epoch: number;
  /** Version the writer read; any other stored version makes the write `conflict`. */
  expectedVersion: number;
  /** True for a snapshot: every stored light not in `lights` is removed. */
  replaceAll: boolean;
  /** Whole light documents to store, keyed by their `id`. */
  lights: Light[];
}

export type WriteResult =
  | { status: "written"; version: number }
  | { status: "fenced" }
  | { status: "conflict" };

/** A bridge's answer to a command, remembered for `commandId` idempotency. */
export type StoredCommandAnswer = (
  | { ok: true; light: Light }
  | { ok: false; details: { code: string; message: string } }
) & {
  /**
   * Fingerprint of the command that got the answer (`commandFingerprint`),
   * so that another command under the same `commandId` is rejected.
   * Answers that an older relay stored lack it.
   */
  fingerprint?: string;
};

/**
 * The outcome of undoing a claim by socket ID. A released claim reports
 * the connection it had replaced, whose socket may still be open and
 * fenced, so that its server can claim the bridge for it again.
 */
export type SocketRelease =
  | { released: false }
  | {
      released: true;
      /** Epoch of the released claim. */
      epoch: number;
      replaced: { serverId: string; socketId: string } | null;
    };

/**
 * Per-bridge state shared by every relay process: presence, the last
 * reported lights with their version, and remembered command answers.
 * Implementations: memory (one process) and Redis (a cluster).
 */
export interface StateStore {
  /** Makes `socketId` on `serverId` the bridge's connection and bumps its epoch. */
  claimConnection(
    bridgeId: string,
    serverId: string,
    socketId: string,
    now: Date,
  ): Promise<ClaimResult>;

  /**
   * Claims the bridge for `socketId` on `serverId` only when no connection
   * holds it, or `staleSocketId` does, and returns the new epoch. Returns
   * the current epoch when `socketId` holds it already (two checks raced),
   * or null when another connection holds the bridge. Used to claim again
   * for a socket that lost its claim, or whose claim Redis replaced with
   * one of a socket that no longer exists.
   */
  claimIfFree(
    bridgeId: string,
    serverId: string,
    socketId: string,
    now: Date,
    staleSocketId?: string,
  ): Promise<number | null>;
  /**
   * Marks the bridge offline if `socketId` still holds it. Returns false,
   * changing nothing, when a newer connection took over. The socket ID
   * fences the release rather than the epoch, because epochs start again
   * at 1 after Redis lost its data, so two connections can share one.
   */
  releaseConnection(
    bridgeId: string,
    socketId: string,
    now: Date,
  ): Promise<boolean>;

  /**
   * Marks the bridge offline if `socketId` is still its connection. It undoes
   * a claim whose reply never came (Redis timed out), which Redis may have
   * run anyway: the socket was refused, so it must not keep the bridge
   * online. Changes nothing when another socket holds the bridge.
   */
  releaseSocket(
    bridgeId: string,
    socketId: string,
    now: Date,
  ): Promise<SocketRelease>;
  /** Presence of each bridge, in the order of `bridgeIds`. */
  getPresence(bridgeIds: string[]): Promise<BridgePresenceRecord[]>;

  /** Whole state of one bridge; a never-seen bridge is at version 0 with no lights. */
  getState(bridgeId: string): Promise<BridgeStateRecord>;

  /** Version plus the stored documents of `lightIds` (null where unknown), read atomically. */
  getLights(
    bridgeId: string,
    lightIds: string[],
  ): Promise<{ version: number; lights: (Light | null)[] }>;

  /** Writes lights and bumps the version by one, atomically, if not fenced or in conflict. */
  writeLights(bridgeId: string, write: LightWrite): Promise<WriteResult>;

  getCommandAnswer(
    bridgeId: string,
    commandId: string,
  ): Promise<StoredCommandAnswer | null>;

  /** Remembers a bridge's answer for `ttlMs` milliseconds. */
  putCommandAnswer(
    bridgeId: string,
    commandId: string,
    answer: StoredCommandAnswer,
    ttlMs: number,
  ): Promise<void>;

  /** Resolves when the store can serve; rejects when it cannot (readiness). */
  ping(): Promise<void>;

  close(): Promise<void>;
}
