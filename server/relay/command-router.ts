import { randomUUID } from "node:crypto";
import { TimeoutReadError } from "redis";
import type { Ack, Light, LightPatch } from "../../client-sdk/src/protocol.ts";
import { RelayError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import type { BusMessage, ServerBus } from "../messaging/server-bus.ts";
import { setInputFirstTimeout } from "./input-first-timeout.ts";
import {
  REPLY_RETRY_LIMITS,
  ReplySender,
  type ReplyRetryLimits,
} from "./reply-sender.ts";

export interface RoutedCommand {
  bridgeId: string;
  commandId: string;
  lightId: string;
  change: LightPatch;
  /**
   * False when the relay made `commandId` up because the caller sent none:
   * no repeat can name it, so its answer is neither looked up nor stored.
   * A message from an older relay lacks the field and is treated as true.
   */
  idempotent?: boolean;
  /**
   * Time (ms since the epoch) by which the bridge's answer must be back on
   * the process that runs the command, for the reply to reach the origin
   * while it still waits. Absent for a command that never left its process.
   */
  deadline?: number;
}

export type CommandAnswer = Ack<{ light: Light }>;

/** Runs a command on the process that holds the bridge's socket. */
export type CommandExecutor = (
  command: RoutedCommand,
) => Promise<CommandAnswer>;

/**
 * `BRIDGE_OFFLINE` because no process received a routed command, on a bus
 * whose receiver count is exact (a single Redis server). Nothing ran it,
 * so it may be sent again: the bridge may have reconnected to another
 * process.
 */
export class NoReceiverError extends RelayError {
  constructor(
    readonly bridgeId: string,
    serverId: string,
  ) {
    super(
      "BRIDGE_OFFLINE",
      `bridge ${bridgeId} is offline: its server ${serverId} received no command`,
    );
  }
}

/** Looks up the remembered answer of a command, or null when there is none. */
export type StoredAnswerLookup = (
  bridgeId: string,
  commandId: string,
) => Promise<CommandAnswer | null>;

export interface CommandRouterOptions {
  /**
   * Part of the timeout left for the reply to travel back, in ms: the
   * bridge's process stops waiting this long before the origin does.
   */
  replyMarginMs?: number;
  replyRetryLimits?: ReplyRetryLimits;
  /**
   * Reads the stored answer of a command whose reply may have been
   * published while this process's subscription was down. Without it,
   * such commands get `UNAVAILABLE` as soon as the subscription is lost.
   */
  storedAnswer?: StoredAnswerLookup;
}

interface PendingRequest {
  resolve: (answer: CommandAnswer) => void;
  cancelTimeout: () => void;
  bridgeId: string;
  commandId: string;
  /** True when a repeat can name the command, so its answer is remembered. */
  idempotent: boolean;
  /**
   * True when the subscription that carries the reply was down at some
   * point since the command was sent, and the remembered answer has not
   * been looked up since it came back.
   */
  replyMayBeLost: boolean;
}

/**
 * Carries commands from the process that received them to the process
 * that holds the bridge, and the answer back, over the server bus. A
 * command for a bridge on this process never leaves it.
 */
export class CommandRouter {
  private readonly pending = new Map<string, PendingRequest>();
  private readonly replies: ReplySender;
  private readonly replyMarginMs: number;
  private readonly storedAnswer: StoredAnswerLookup | undefined;
  /** False from the loss of the subscription until `recoverReplies`. */
  private receiving = true;

  /** `timeoutMs` is how long the origin waits for a reply. */
  constructor(
    private readonly bus: ServerBus,
    private readonly execute: CommandExecutor,
    private readonly timeoutMs: number,
    private readonly logger: Logger,
    options: CommandRouterOptions = {},
  ) {
    this.replyMarginMs = options.replyMarginMs ?? 0;
    this.storedAnswer = options.storedAnswer;
    this.replies = new ReplySender(
      bus,
      logger,
      options.replyRetryLimits ?? REPLY_RETRY_LIMITS,
    );
    bus.onReceivingLost(() => this.receivingLost());
  }

  /**
   * Marks the waiting commands with a `commandId` for a lookup once the
   * subscription is back, and answers the others `UNAVAILABLE`, because
   * replies published meanwhile are lost and only the former are stored.
   */
  private receivingLost(): void {
    this.receiving = false;
    let answered = 0;
    for (const [requestId, request] of this.pending) {
      if (this.canRecover(request.idempotent)) {
        request.replyMayBeLost = true;
        continue;
      }
      answered += 1;
      this.settle(
        requestId,
        unavailableAnswer(
          "lost the connection to the bridge's server, retry later",
        ),
      );
    }
    const waiting = this.pending.size;
    if (waiting + answered === 0) return;
    this.logger.warn(
      { waiting, answered },
      "lost the subscription that carries command replies; commands with a commandId wait for it to return, the others answer UNAVAILABLE",
    );
  }

  /** Returns true when the stored answer of a command can be read after its reply was lost, which needs a `commandId`. */
  private canRecover(idempotent: boolean): boolean {
    return this.storedAnswer !== undefined && idempotent;
  }

  /**
   * Reads the stored answers of the commands whose replies may have been
   * lost, once the subscription is back. The bridge's process stores an
   * answer before it publishes the reply, so a reply this lookup misses
   * is published later and arrives. A failed lookup keeps the mark.
   */
  async recoverReplies(): Promise<void> {
    this.receiving = true;
    const lookup = this.storedAnswer;
    if (lookup === undefined) return;
    const lost = [...this.pending].filter(
      ([, request]) => request.replyMayBeLost,
    );
    if (lost.length === 0) return;
    const found = await Promise.all(
      lost.map(([requestId, request]) =>
        this.recoverReply(lookup, requestId, request),
      ),
    );
    this.logger.info(
      {
        requests: lost.length,
        answered: found.filter((answered) => answered).length,
      },
      "looked up the answers of commands whose replies may have been lost while the subscription was down",
    );
  }

  /** Settles one request with its remembered answer. Returns whether one was found. */
  private async recoverReply(
    lookup: StoredAnswerLookup,
    requestId: string,
    request: PendingRequest,
  ): Promise<boolean> {
    request.replyMayBeLost = false;
    let answer: CommandAnswer | null;
    try {
      answer = await lookup(request.bridgeId, request.commandId);
    } catch (error) {
      request.replyMayBeLost = true;
      this.logger.warn(
        {
          err: error,
          bridgeId: request.bridgeId,
          commandId: request.commandId,
        },
        "could not look up the answer of a command whose reply may have been lost",
      );
      return false;
    }
    if (answer === null) return false;
    this.settle(requestId, answer);
    return true;
  }

  /**
   * Sends `command` to `serverId`. Returns a `TIMEOUT` answer if no reply
   * comes within the timeout, also while the publish still waits for Redis.
   * `onUncounted` runs when a bus whose count is not exact counted no
   * receiver, while the reply is still awaited.
   */
  async send(
    serverId: string,
    command: RoutedCommand,
    onUncounted?: () => void,
  ): Promise<CommandAnswer> {
    if (serverId === this.bus.serverId) return this.execute(command);
    const requestId = randomUUID();
    const answer = new Promise<CommandAnswer>((resolve) => {
      // Reads a reply that arrived while this process was stopped before
      // giving up on it.
      const cancelTimeout = setInputFirstTimeout(() => {
        const request = this.pending.get(requestId);
        this.pending.delete(requestId);
        resolve(
          request?.replyMayBeLost === true
            ? lostReplyAnswer(command.bridgeId)
            : timeoutAnswer(command.bridgeId),
        );
      }, this.timeoutMs);
      const idempotent = command.idempotent ?? true;
      this.pending.set(requestId, {
        resolve,
        cancelTimeout,
        bridgeId: command.bridgeId,
        commandId: command.commandId,
        idempotent,
        // A reply to a command sent while the subscription is down is lost
        // too, when Redis still takes the publish.
        replyMayBeLost: !this.receiving && this.canRecover(idempotent),
      });
    });
    const deadline = Date.now() + this.timeoutMs - this.replyMarginMs;
    const delivered = this.deliver(
      serverId,
      requestId,
      { ...command, deadline },
      onUncounted,
    );
    return Promise.race([answer, delivered.then(() => answer)]);
  }

  /**
   * Publishes `command` to `serverId`'s channel. Rejects with
   * `UNAVAILABLE` when Redis fails the publish, `TIMEOUT` when the publish
   * was sent but Redis did not answer in time (Redis may still deliver it,
   * so the outcome is unknown), and `BRIDGE_OFFLINE` when no process
   * receives it, after dropping the pending reply. On a bus whose count is
   * not exact (Redis Cluster), a count of 0 leaves the reply awaited.
   */
  private async deliver(
    serverId: string,
    requestId: string,
    command: RoutedCommand,
    onUncounted?: () => void,
  ): Promise<void> {
    let received: boolean;
    try {
      received = await this.bus.send(serverId, {
        type: "command",
        requestId,
        origin: this.bus.serverId,
        ...command,
      });
    } catch (error) {
      this.settle(requestId, undefined);
      this.logger.warn(
        { err: error, bridgeId: command.bridgeId, serverId },
        "could not route a command",
      );
      if (error instanceof TimeoutReadError) {
        throw new RelayError(
          "TIMEOUT",
          `the command for bridge ${command.bridgeId} was sent, but Redis did not confirm it in time; it may still reach the bridge`,
        );
      }
      throw new RelayError(
        "UNAVAILABLE",
        "could not reach the bridge's server, retry later",
      );
    }
    if (received) return;
    if (!this.bus.countsReceivers) {
      // The command may have arrived all the same, so the reply is awaited
      // until the timeout rather than the command sent again.
      this.logger.debug(
        { bridgeId: command.bridgeId, serverId },
        "a routed command counted no receiver on Redis Cluster, awaiting its reply",
      );
      onUncounted?.();
      return;
    }
    // The claim names a process that no longer runs (it crashed before it
    // could release the bridge), so no process has the bridge's socket.
    this.settle(requestId, undefined);
    throw new NoReceiverError(command.bridgeId, serverId);
  }

  /** Handles a command or reply that arrived on the bus. */
  async handle(message: BusMessage): Promise<void> {
    if (message.type === "reply") {
      this.settle(message.requestId, message.answer);
      return;
    }
    if (message.type !== "command") return;
    const receivedAt = Date.now();
    const { requestId, origin, type: _type, ...command } = message;
    if (command.deadline !== undefined && Date.now() >= command.deadline) {
      // Dropped before the commands in flight are looked up, so that a late
      // copy never becomes the command an in-time repeat of it joins. The
      // origin has stopped waiting, so no reply is sent.
      this.logger.warn(
        {
          bridgeId: command.bridgeId,
          commandId: command.commandId,
          lateMs: Date.now() - command.deadline,
        },
        "dropped a command that arrived after its deadline",
      );
      return;
    }
    const answer = await this.execute(command);
    await this.replies.send({
      origin,
      requestId,
      bridgeId: command.bridgeId,
      commandId: command.commandId,
      answer,
      // A command from an older relay carries no deadline. Its origin waits
      // about as long as this process would.
      deadline:
        command.deadline ?? receivedAt + this.timeoutMs - this.replyMarginMs,
    });
  }

  private settle(requestId: string, answer: CommandAnswer | undefined): void {
    const request = this.pending.get(requestId);
    if (request === undefined) return;
    this.pending.delete(requestId);
    request.cancelTimeout();
    if (answer !== undefined) request.resolve(answer);
  }

  /** Answers every pending request with `UNAVAILABLE` (on shutdown). */
  close(): void {
    this.answerPending("the relay is shutting down, retry");
  }

  /** Resolves every pending request with an `UNAVAILABLE` answer carrying `message`. */
  private answerPending(message: string): void {
    for (const requestId of [...this.pending.keys()])
      this.settle(requestId, unavailableAnswer(message));
  }
}

function unavailableAnswer(message: string): CommandAnswer {
  return {
    ok: false,
    error: new RelayError("UNAVAILABLE", message).toBody(),
  };
}

/**
 * Returns the answer of a command whose reply may have been lost, at its
 * timeout while the subscription is still down. The bridge may have
 * applied it. A repeat with the same `commandId` gets the stored answer,
 * unless Redis lost it too, and otherwise reaches the bridge again.
 */
function lostReplyAnswer(bridgeId: string): CommandAnswer {
  return unavailableAnswer(
    `lost the connection that carries the answers of bridge ${bridgeId}'s server, and the command may have run; repeat it with the same commandId to get its stored answer or to let the bridge drop it as a duplicate`,
  );
}

/**
 * Returns the answer of a command whose reply did not come back in time.
 * The bridge's process answers `TIMEOUT` itself when the bridge is late,
 * before this timeout, so here the bridge may have answered and its
 * reply been lost, for example while Redis was down.
 */
function timeoutAnswer(bridgeId: string): CommandAnswer {
  return {
    ok: false,
    error: new RelayError(
      "TIMEOUT",
      `no answer from bridge ${bridgeId} came back within the command timeout, and the command may have run`,
    ).toBody(),
  };
}
