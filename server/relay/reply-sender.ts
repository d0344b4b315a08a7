import { Counter } from "prom-client";
import type { Logger } from "../logger.ts";
import { RepeatLimiter } from "../logging/repeat-limiter.ts";
import { relayRegistry } from "../metrics/relay-metrics.ts";
import type { ServerBus } from "../messaging/server-bus.ts";
import type { CommandAnswer } from "./command-router.ts";

/** Limits on publishing one command reply again after Redis failed it. */
export interface ReplyRetryLimits {
  /** Maximum publishes of one reply, the first included. */
  maxAttempts: number;
  /** Wait before the second publish, in ms. It doubles after each failure. */
  firstDelayMs: number;
  /** Maximum wait between two publishes, in ms. */
  maxDelayMs: number;
  /**
   * Maximum replies of this process waiting to be published again. A reply
   * that fails while this many wait is dropped, so an outage under load
   * keeps at most this many replies in memory.
   */
  maxQueued: number;
}

/**
 * Default limits. Publishes 50 ms apart at first and at most 1 s apart, so
 * a reply goes out within about 1 s of the worker's Redis connection coming
 * back. The 20 attempts cover about 16 s, longer than the default command
 * timeout of 5 s, so with default settings the deadline ends the retries.
 */
export const REPLY_RETRY_LIMITS: ReplyRetryLimits = {
  maxAttempts: 20,
  firstDelayMs: 50,
  maxDelayMs: 1000,
  maxQueued: 10_000,
};

/** Outcomes of command replies whose first publish failed. */
export const retriedReplies = new Counter({
  name: "relay_command_replies_retried_total",
  help: "Command replies whose first publish to the app's server failed: sent on a later publish, dropped at their deadline or attempt limit, or dropped at once because too many waited.",
  labelNames: ["outcome"] as const,
  registers: [relayRegistry],
});

/** Window of the log line for replies dropped because too many wait, in ms. */
const QUEUE_FULL_LOG_WINDOW_MS = 10_000;

/** A command reply to publish to the process that sent the command. */
export interface CommandReply {
  origin: string;
  requestId: string;
  bridgeId: string;
  commandId: string;
  answer: CommandAnswer;
  /**
   * Time (ms since the epoch) after which the origin no longer waits for
   * the reply, so publishing it is useless.
   */
  deadline: number;
}

/**
 * Publishes command replies over the bus. When Redis fails a publish (the
 * worker's connection is down or Redis did not confirm it in time), it
 * publishes the reply again with a growing delay until the reply's
 * deadline, up to `maxAttempts` times. A reply that Redis did deliver but
 * did not confirm may then reach the origin twice. The origin ignores the
 * second copy, because the request it answers is no longer pending.
 */
export class ReplySender {
  /** Replies that failed at least once and wait to be published again. */
  private queued = 0;
  private readonly queueFullLog = new RepeatLimiter(QUEUE_FULL_LOG_WINDOW_MS);

  constructor(
    private readonly bus: ServerBus,
    private readonly logger: Logger,
    private readonly limits: ReplyRetryLimits = REPLY_RETRY_LIMITS,
  ) {}

  /** Number of replies waiting to be published again. */
  get waiting(): number {
    return this.queued;
  }

  /**
   * Publishes `reply`, and again after each failure while it can still
   * reach the origin in time. Resolves once the reply was published or
   * dropped, and logs the drop. Never rejects.
   */
  async send(reply: CommandReply): Promise<void> {
    const ids = { bridgeId: reply.bridgeId, commandId: reply.commandId };
    let error = await this.publish(reply);
    if (error === undefined) return;
    if (this.queued >= this.limits.maxQueued) {
      retriedReplies.inc({ outcome: "dropped_queue_full" });
      this.logQueueFull(ids, error);
      return;
    }
    this.queued += 1;
    try {
      let attempts = 1;
      let delayMs = this.limits.firstDelayMs;
      while (error !== undefined) {
        const dropReason = this.dropReason(attempts, delayMs, reply.deadline);
        if (dropReason !== undefined) {
          retriedReplies.inc({ outcome: "dropped" });
          this.logger.warn(
            { err: error, ...ids, attempts, reason: dropReason },
            "could not send a command answer back to the app's server",
          );
          return;
        }
        await sleep(delayMs);
        delayMs = Math.min(delayMs * 2, this.limits.maxDelayMs);
        attempts += 1;
        error = await this.publish(reply);
      }
      retriedReplies.inc({ outcome: "sent" });
      this.logger.info(
        { ...ids, attempts },
        "sent a command answer back to the app's server after Redis failed the first publishes",
      );
    } finally {
      this.queued -= 1;
    }
  }

  /** Publishes `reply` once. Returns the error of a failed publish. */
  private async publish(reply: CommandReply): Promise<unknown> {
    try {
      // The count of receivers is ignored: 0 means the origin has exited,
      // and on Redis Cluster it can also mean a delivered reply.
      await this.bus.send(reply.origin, {
        type: "reply",
        requestId: reply.requestId,
        answer: reply.answer,
      });
      return undefined;
    } catch (error) {
      // `undefined` marks success, so a rejection without a value gets one.
      return error ?? new Error("the publish failed without an error");
    }
  }

  /** Returns why a reply that failed `attempts` times is dropped, or undefined to publish it again after `delayMs`. */
  private dropReason(
    attempts: number,
    delayMs: number,
    deadline: number,
  ): string | undefined {
    if (attempts >= this.limits.maxAttempts)
      return `failed ${attempts} publishes, the maximum`;
    if (Date.now() + delayMs >= deadline)
      return "the app's server stops waiting before the next publish";
    return undefined;
  }

  private logQueueFull(ids: object, error: unknown): void {
    const suppressed = this.queueFullLog.admit("queue-full");
    if (suppressed === null) return;
    this.logger.warn(
      {
        err: error,
        ...ids,
        maxQueued: this.limits.maxQueued,
        suppressed,
      },
      "could not send a command answer back to the app's server, and dropped it without retrying because too many answers wait to be sent again",
    );
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
