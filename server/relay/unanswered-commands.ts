import type { Socket } from "socket.io";
import { RelayError } from "../errors.ts";

/**
 * `retryAfterMs` of a command rejected while some commands at the limit
 * still wait for answers, which may come at any moment.
 */
const WAITING_RETRY_AFTER_MS = 1000;

/** Commands sent on one bridge connection whose acknowledgement is pending. */
interface SocketCommands {
  /** Expiry times (`performance.now()`) of the callbacks Socket.IO still holds. */
  readonly callbacks: Set<{ expiresAt: number }>;
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
 * commands to that connection are rejected with `RATE_LIMITED` and not
 * sent. A new connection of the bridge starts with none.
 */
export class UnansweredCommands {
  private readonly bySocket = new Map<Socket, SocketCommands>();

  constructor(private readonly limit: number) {}

  /**
   * Counts a command about to be sent on `socket`, whose acknowledgement
   * callback Socket.IO drops after `callbackMs`, or throws `RATE_LIMITED`
   * when the socket has `limit` unanswered. `onDisconnect` fails the
   * command if the socket closes while its caller waits.
   */
  admit(
    socket: Socket,
    bridgeId: string,
    callbackMs: number,
    onDisconnect: (error: RelayError) => void,
  ): SentCommand {
    const commands = this.bySocket.get(socket) ?? this.track(socket, bridgeId);
    if (commands.callbacks.size >= this.limit) {
      this.forgetIfDone(socket, commands);
      throw new RelayError(
        "RATE_LIMITED",
        `bridge ${bridgeId} has not answered ${commands.callbacks.size} commands on this connection; retry after retryAfterMs`,
        { retryAfterMs: retryAfterMs(commands) },
      );
    }
    const callback = { expiresAt: performance.now() + callbackMs };
    commands.callbacks.add(callback);
    commands.waiting.add(onDisconnect);
    return {
      stopWaiting: () => {
        commands.waiting.delete(onDisconnect);
        this.forgetIfDone(socket, commands);
      },
      acknowledged: () => {
        commands.callbacks.delete(callback);
        this.forgetIfDone(socket, commands);
      },
    };
  }

  private track(socket: Socket, bridgeId: string): SocketCommands {
    const commands: SocketCommands = {
      callbacks: new Set(),
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
    if (commands.callbacks.size > 0 || commands.waiting.size > 0) return;
    if (this.bySocket.get(socket) !== commands) return;
    this.bySocket.delete(socket);
    socket.off("disconnect", commands.onDisconnect);
  }
}

/**
 * Returns when a rejected command may succeed: soon while some commands
 * still wait for answers, else when the oldest callback expires, since a
 * bridge that let every command time out frees none before then.
 */
function retryAfterMs(commands: SocketCommands): number {
  if (commands.waiting.size > 0) return WAITING_RETRY_AFTER_MS;
  let oldest = Infinity;
  for (const { expiresAt } of commands.callbacks) {
    oldest = Math.min(oldest, expiresAt);
  }
  return Math.max(1, Math.ceil(oldest - performance.now()));
}
