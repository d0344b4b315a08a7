import type { Namespace, Socket } from "socket.io";
import type { Logger } from "../logger.ts";
import type { ServerBus } from "../messaging/server-bus.ts";
import type { StateStore } from "../state/store.ts";
import type { AppBroadcaster } from "./broadcaster.ts";

/** A bridge connection held by this process. */
export interface BridgeSession {
  bridgeId: string;
  epoch: number;
  socket: Socket;
}

export const REPLACED_REASON = "a newer connection of this bridge took over";
export const RESYNC_REASON =
  "the relay lost its copy of this bridge's state; send a snapshot";

/** Claims checked per store round trip when revalidating after a Redis reconnect. */
const REVALIDATE_BATCH = 500;

/**
 * Tracks the bridge sockets of this process and their claims in the shared
 * store. The newest connection of a bridge wins anywhere in the cluster:
 * claiming tells the previous holder, local or on another process, to send
 * `session:replaced` and disconnect its socket.
 */
export class BridgeSessions {
  private readonly sessions = new Map<string, BridgeSession>();
  private readonly releasing = new Set<Promise<void>>();

  constructor(
    private readonly store: StateStore,
    private readonly bus: ServerBus,
    private readonly broadcaster: AppBroadcaster,
    private readonly bridges: Namespace,
    private readonly logger: Logger,
  ) {}

  get(bridgeId: string): BridgeSession | undefined {
    return this.sessions.get(bridgeId);
  }

  get count(): number {
    return this.sessions.size;
  }

  /** Claims the bridge for `socket`, replacing any older connection. */
  async claim(bridgeId: string, socket: Socket): Promise<BridgeSession> {
    const now = new Date();
    const { epoch, previous } = await this.store.claimConnection(
      bridgeId,
      this.bus.serverId,
      socket.id,
      now,
    );
    const session: BridgeSession = { bridgeId, epoch, socket };
    this.sessions.set(bridgeId, session);
    if (previous === null) {
      this.broadcaster.presence({
        bridgeId,
        online: true,
        lastSeen: now.toISOString(),
      });
    } else if (previous.socketId !== socket.id) {
      await this.replace(bridgeId, previous.serverId, previous.socketId);
    }
    return session;
  }

  /** Releases the claim when `session` is still current, and reports the bridge offline. */
  release(session: BridgeSession): Promise<void> {
    const releasing = this.releaseNow(session);
    this.releasing.add(releasing);
    void releasing
      .catch(() => undefined)
      .finally(() => this.releasing.delete(releasing));
    return releasing;
  }

  /** Resolves once every release in flight has finished (before Redis is closed on shutdown). */
  async settleReleases(): Promise<void> {
    await Promise.allSettled([...this.releasing]);
  }

  private async releaseNow(session: BridgeSession): Promise<void> {
    if (this.sessions.get(session.bridgeId) === session) {
      this.sessions.delete(session.bridgeId);
    }
    const now = new Date();
    const released = await this.store.releaseConnection(
      session.bridgeId,
      session.epoch,
      now,
    );
    if (released) {
      this.broadcaster.presence({
        bridgeId: session.bridgeId,
        online: false,
        lastSeen: now.toISOString(),
      });
    }
  }

  /**
   * Checks every local bridge's claim against the store, after Redis came
   * back from an outage. A lost claim (Redis restarted empty) is made
   * again and the bridge is sent `state:resync`, so it resends its lights.
   * A claim taken by another socket meanwhile disconnects the local one.
   */
  async revalidate(): Promise<void> {
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
  }

  private async revalidateOne(
    session: BridgeSession,
    stored: { socketId: string; epoch: number } | null,
  ): Promise<void> {
    if (this.sessions.get(session.bridgeId) !== session) return;
    if (
      stored?.socketId === session.socket.id &&
      stored.epoch === session.epoch
    )
      return;
    if (stored !== null) {
      this.disconnectReplaced(session.bridgeId, session.socket.id);
      return;
    }
    const now = new Date();
    const { epoch } = await this.store.claimConnection(
      session.bridgeId,
      this.bus.serverId,
      session.socket.id,
      now,
    );
    session.epoch = epoch;
    this.broadcaster.presence({
      bridgeId: session.bridgeId,
      online: true,
      lastSeen: now.toISOString(),
    });
    this.logger.info(
      { bridgeId: session.bridgeId, socketId: session.socket.id, epoch },
      "bridge claim was lost, asking for a snapshot",
    );
    session.socket.emit("state:resync", { reason: RESYNC_REASON });
  }

  /** Disconnects a local socket that a newer connection replaced. */
  disconnectReplaced(bridgeId: string, socketId: string): void {
    const socket = this.bridges.sockets.get(socketId);
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
