import type { Logger } from "../logger.ts";
import type { ConnectionState } from "../redis/connection-state.ts";
import type { BusMessage } from "./bus-message.ts";

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

/**
 * A bus over Redis sharded pub/sub (Redis 7): one channel per process,
 * `<prefix>:server:<serverId>`, so under Redis Cluster each message goes
 * to the one shard that owns the channel.
 */
export class RedisBus implements ServerBus {
  private readonly channel: string;

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

  async listen(handler: BusHandler): Promise<void> {
    await this.redis.subscriber.sSubscribe(this.channel, (raw) => {
      let message: BusMessage;
      try {
        message = JSON.parse(raw) as BusMessage;
      } catch (error) {
        this.logger.warn({ err: error }, "ignored a malformed bus message");
        return;
      }
      handler(message);
    });
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
