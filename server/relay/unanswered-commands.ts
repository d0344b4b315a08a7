import type { Socket } from "socket.io";
import { RelayError } from "../errors.ts";

/** `retryAfterMs` sent with a command rejected because its bridge is at its limit. */
const FULL_RETRY_AFTER_MS = 1000;

/** Commands sent on one bridge connection whose acknowledgement is pending. */
interface SocketCommands {
  /** Acknowledgement callbacks that Socket.IO still holds for this socket. */
  unanswered: number;
  /** Commands whose caller still waits, failed with `BRIDGE_OFFLINE` on disconnect. */
  readonly waiting: Set<(error: RelayError) => void>;
  readonly onDisconnect: () => void;
}

/** One command sent to a bridge, as `UnansweredCommands.admit` returns it. */
export interface SentCommand {
  /** The caller stopped waiting: it got an answer, or its timeout passed. */
  stopWaiting(): void;
  /** Socket.IO called the acknowledgement back, with the answer or its own timeout. */
  acknowledged(): void;
}

/**
 * Counts the commands that each bridge connection has not answered, and
 * fails those whose caller still waits when the connection closes. One
 * `disconnect` listener per socket serves all its commands, however many
 * are in flight.
 *
 * Socket.IO keeps a command's acknowledgement callback until the bridge
 * answers or the callback's own timeout passes, after the caller's. A
 * bridge that stops answering would hold one per command; past `limit`,
 * commands to it are rejected with `RATE_LIMITED` and not sent.
 */
export class UnansweredCommands {
  private readonly bySocket = new Map<Socket, SocketCommands>();

  constructor(private readonly limit: number) {}

  /**
   * Counts a command about to be sent on `socket`, or throws `RATE_LIMITED`
   * when the socket has `limit` unanswered. `onDisconnect` fails the
   * command if the socket closes while its caller waits.
   */
  admit(
    socket: Socket,
    bridgeId: string,
    onDisconnect: (error: RelayError) => void,
  ): SentCommand {
    const commands = this.bySocket.get(socket) ?? this.track(socket, bridgeId);
    if (commands.unanswered >= this.limit) {
      this.forgetIfDone(socket, commands);
      throw new RelayError(
        "RATE_LIMITED",
        `bridge ${bridgeId} has not answered ${commands.unanswered} commands; retry after retryAfterMs`,
        { retryAfterMs: FULL_RETRY_AFTER_MS },
      );
    }
    commands.unanswered += 1;
    commands.waiting.add(onDisconnect);
    let acknowledged = false;
    return {
      stopWaiting: () => {
        commands.waiting.delete(onDisconnect);
        this.forgetIfDone(socket, commands);
      },
      acknowledged: () => {
        if (acknowledged) return;
        acknowledged = true;
        commands.unanswered -= 1;
        this.forgetIfDone(socket, commands);
      },
    };
  }

  /** Number of commands `socket` has not answered. */
  unansweredOn(socket: Socket): number {
    return this.bySocket.get(socket)?.unanswered ?? 0;
  }

  private track(socket: Socket, bridgeId: string): SocketCommands {
    const commands: SocketCommands = {
      unanswered: 0,
      waiting: new Set(),
      onDisconnect: () => {
        this.bySocket.delete(socket);
        const error = new RelayError(
          "BRIDGE_OFFLINE",
          `bridge ${bridgeId} disconnected`,
        );
        for (const fail of commands.waiting) fail(error);
        commands.waiting.clear();
      },
    };
    this.bySocket.set(socket, commands);
    socket.once("disconnect", commands.onDisconnect);
    return commands;
  }

  /** Drops a socket's entry and listener once nothing waits and every callback came back. */
  private forgetIfDone(socket: Socket, commands: SocketCommands): void {
    if (commands.unanswered > 0 || commands.waiting.size > 0) return;
    if (this.bySocket.get(socket) !== commands) return;
    this.bySocket.delete(socket);
    socket.off("disconnect", commands.onDisconnect);
  }
}
