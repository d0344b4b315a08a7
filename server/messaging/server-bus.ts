import { Counter } from "prom-client";
import type { Logger } from "../logger.ts";
import { RepeatLimiter } from "../logging/repeat-limiter.ts";
import { relayRegistry } from "../metrics/relay-metrics.ts";
import type { ConnectionState } from "../redis/connection-state.ts";
import {
  BUS_MESSAGE_TYPES,
  parseBusMessage,
  type BusMessage,
  type DroppedBusMessage,
} from "./bus-message.ts";

export type { BusMessage } from "./bus-message.ts";

export type BusHandler = (message: BusMessage) => void;

/**
 * Point-to-point messaging between relay processes. Each process listens
 * on its own channel only, so a command costs one publish to the bridge's
 * process and one reply to the app's process, whatever the number of
 * processes (unlike the adapter's broadcast-with-ack, which every server
 * answers).
 */
export interface ServerBus {
  readonly serverId: string;
  /**
   * True when `send` returning false means that no process received the
   * message. On Redis Cluster it can mean a delivered message: a replica
   * that a stale slot map names as master passes SPUBLISH on to its shard
   * but counts only its own subscribers, which are none.
   */
  readonly countsReceivers: boolean;
  /** Sends `message` and returns whether a process listening as `serverId` received it. */
  send(serverId: string, message: BusMessage): Promise<boolean>;
  listen(handler: BusHandler): Promise<void>;
  /**
   * Calls `listener` each time this process's subscription goes down.
   * Messages sent to the process are lost until it is back.
   */
  onReceivingLost(listener: () => void): void;
  close(): Promise<void>;
}

/** The bus of the embedded single-process relay: every message is local. */
export class LocalBus implements ServerBus {
  readonly countsReceivers = true;
  private handler: BusHandler | undefined;

  constructor(readonly serverId: string) {}

  async send(serverId: string, message: BusMessage): Promise<boolean> {
    const handler = this.handler;
    if (serverId !== this.serverId || handler === undefined) return false;
    setImmediate(() => handler(message));
    return true;
  }

  async listen(handler: BusHandler): Promise<void> {
    this.handler = handler;
  }

  /** Does nothing: messages within one process are never lost. */
  onReceivingLost(): void {}

  async close(): Promise<void> {
    this.handler = undefined;
  }
}

/** The Redis clients of a RedisBus: a node-redis client or cluster client for each side. */
export interface BusRedisClients {
  main: { sPublish(channel: string, message: string): Promise<number> };
  subscriber: {
    sSubscribe(
      channel: string,
      listener: (message: string) => void,
    ): Promise<void>;
    sUnsubscribe(channel: string): Promise<void>;
  };
  subscriberState: ConnectionState;
}

/** Received messages dropped because they were not JSON or failed the schema. */
export const droppedBusMessages = new Counter({
  name: "relay_bus_messages_dropped_total",
  help: "Server bus messages that this process received and dropped, by reason (not_json, or invalid for a failed message schema) and type (command, reply, replace, reclaim, checkClaim, or unknown).",
  labelNames: ["reason", "type"] as const,
  registers: [relayRegistry],
});

/** Window of the log line for dropped bus messages of one reason and type, in ms. */
const DROPPED_LOG_WINDOW_MS = 10_000;

/**
 * A bus over Redis sharded pub/sub (Redis 7): one channel per process,
 * `<prefix>:server:<serverId>`, so under Redis Cluster each message goes
 * to the one shard that owns the channel.
 */
export class RedisBus implements ServerBus {
  private readonly channel: string;
  private readonly droppedLog = new RepeatLimiter(DROPPED_LOG_WINDOW_MS);

  /**
   * `countsReceivers` is false on Redis Cluster (see ServerBus), true on a
   * single Redis server.
   */
  constructor(
    readonly serverId: string,
    private readonly redis: BusRedisClients,
    private readonly keyPrefix: string,
    private readonly logger: Logger,
    readonly countsReceivers = true,
  ) {
    this.channel = this.channelOf(serverId);
  }

  private channelOf(serverId: string): string {
    return `${this.keyPrefix}:server:${serverId}`;
  }

  async send(serverId: string, message: BusMessage): Promise<boolean> {
    // SPUBLISH returns the number of subscribers that received the message,
    // so 0 means no live process listens as `serverId`.
    const receivers = await this.redis.main.sPublish(
      this.channelOf(serverId),
      JSON.stringify(message),
    );
    return receivers > 0;
  }

  /**
   * Subscribes to this process's channel and passes each message that
   * fits the bus message schema to `handler`. Other messages are dropped,
   * counted and logged (see `drop`).
   */
  async listen(handler: BusHandler): Promise<void> {
    await this.redis.subscriber.sSubscribe(this.channel, (raw) => {
      const parsed = parseBusMessage(raw);
      if (parsed.success) handler(parsed.message);
      else this.drop(parsed);
    });
  }

  /**
   * Counts a dropped message, and logs it unless a message of the same
   * reason and type was logged within DROPPED_LOG_WINDOW_MS.
   */
  private drop(dropped: DroppedBusMessage): void {
    const { reason, type, problem } = dropped;
    const typeLabel =
      type !== undefined && BUS_MESSAGE_TYPES.has(type) ? type : "unknown";
    droppedBusMessages.inc({ reason, type: typeLabel });
    const suppressed = this.droppedLog.admit(`${reason}:${typeLabel}`);
    if (suppressed === null) return;
    this.logger.warn(
      { reason, type, problem, channel: this.channel, suppressed },
      reason === "not_json"
        ? "dropped a server bus message that is not JSON"
        : "dropped a server bus message that fails the bus message schema",
    );
  }

  // NOTE: on Redis Cluster this also fires when the subscriber connection
  // of a shard other than this channel's drops, so waiting commands without
  // a commandId get UNAVAILABLE although their replies could still arrive.
  onReceivingLost(listener: () => void): void {
    this.redis.subscriberState.onReconnecting(listener);
  }

  async close(): Promise<void> {
    await this.redis.subscriber.sUnsubscribe(this.channel);
  }
}
