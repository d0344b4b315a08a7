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

/**
 * Tracks the bridge sockets of this process and their claims in the shared
 * store. The newest connection of a bridge wins anywhere in the cluster:
 * claiming tells the previous holder, local or on another process, to send
 * `session:replaced` and disconnect its socket.
 */
export class BridgeSessions {
  private readonly sessions = new Map<string, BridgeSession>();

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
  async release(session: BridgeSession): Promise<void> {
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
