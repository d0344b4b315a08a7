import type { RedisClientType } from "redis";
import type { Logger } from "../logger.ts";

type Listener = Parameters<RedisClientType["sSubscribe"]>[1];

/** The sharded pub/sub methods of a node-redis client or cluster client. */
export interface ShardedSubscriber {
  sSubscribe(
    channels: string | string[],
    listener: Listener,
    bufferMode?: boolean,
  ): Promise<void>;
  sUnsubscribe(
    channels: string | string[],
    listener?: Listener,
    bufferMode?: boolean,
  ): Promise<void>;
}

/** Sharded pub/sub requests in flight and failed, as `retryShardedSubscriptions` tracks them. */
export interface ShardedRequests {
  /**
   * Resolves once every request sent before the call has its reply or has
   * failed. Resolves true when each channel is as last requested, and
   * false while a failed request waits to be sent again.
   */
  settle(): Promise<boolean>;
}

/** A failed request for one channel, to send again once the connection is back. */
interface FailedRequest {
  kind: "subscribe" | "unsubscribe";
  listener: Listener | undefined;
  bufferMode: boolean | undefined;
}

/**
 * Makes `client` send a sharded subscribe or unsubscribe again when it
 * failed because the connection dropped, once the client is ready again.
 *
 * The Socket.IO Redis adapter (@socket.io/redis-adapter 8.3.0) calls
 * `sSubscribe` when a room is created and `sUnsubscribe` when it is
 * deleted, and awaits neither. node-redis 6.4 rejects such a request when
 * the connection drops before Redis replies, even with the offline queue
 * disabled, and leaves the channel as it was. A room deleted during an outage therefore stays
 * subscribed after the reconnect, a room created stays unsubscribed, and
 * each rejection is unhandled. This handles the rejection and, each time
 * `onReady` reports a connection ready, repeats the last failed request of
 * each channel, unless a newer request for that channel was made meanwhile.
 */
export function retryShardedSubscriptions(
  client: ShardedSubscriber,
  onReady: (listener: () => void) => void,
  logger: Logger,
): ShardedRequests {
  const subscribe = client.sSubscribe.bind(client);
  const unsubscribe = client.sUnsubscribe.bind(client);
  /** Number of the newest request per channel, while that request is pending or failed. */
  const newest = new Map<string, number>();
  const failed = new Map<string, FailedRequest>();
  const inFlight = new Set<Promise<void>>();
  let requestCount = 0;

  const track = (
    channels: string | string[] | undefined,
    request: Promise<void>,
    retry: FailedRequest,
  ): Promise<void> => {
    const names = typeof channels === "string" ? [channels] : (channels ?? []);
    const numbers = names.map((channel) => {
      requestCount += 1;
      newest.set(channel, requestCount);
      failed.delete(channel);
      return requestCount;
    });
    const isNewest = (channel: string, index: number): boolean =>
      newest.get(channel) === numbers[index];
    inFlight.add(request);
    // These handlers run before those of a later settle(), so the request
    // is counted as failed by the time settle() checks.
    request.then(
      () => {
        inFlight.delete(request);
        names.forEach((channel, index) => {
          if (isNewest(channel, index)) newest.delete(channel);
        });
      },
      (error: unknown) => {
        inFlight.delete(request);
        const retried = names.filter(isNewest);
        for (const channel of retried) failed.set(channel, retry);
        logger.debug(
          { err: error, channels: retried, request: retry.kind },
          "sharded pub/sub request failed, sending it again after the reconnect",
        );
      },
    );
    return request;
  };

  client.sSubscribe = (channels, listener, bufferMode) =>
    track(channels, subscribe(channels, listener, bufferMode), {
      kind: "subscribe",
      listener,
      bufferMode,
    });
  client.sUnsubscribe = (channels, listener, bufferMode) =>
    track(channels, unsubscribe(channels, listener, bufferMode), {
      kind: "unsubscribe",
      listener,
      bufferMode,
    });

  // By the time a connection is ready, node-redis has subscribed it again
  // to the channels it still lists, so the repeated requests apply on top.
  onReady(() => {
    const retries = [...failed];
    failed.clear();
    for (const [channel, request] of retries) {
      if (request.kind === "subscribe" && request.listener !== undefined) {
        void client.sSubscribe(channel, request.listener, request.bufferMode);
      } else if (request.kind === "unsubscribe") {
        void client.sUnsubscribe(channel, request.listener, request.bufferMode);
      }
    }
    if (retries.length > 0) {
      logger.info(
        { channels: retries.length },
        "sent failed sharded pub/sub requests again after the reconnect",
      );
    }
  });

  return {
    settle: async () => {
      await Promise.allSettled([...inFlight]);
      return failed.size === 0;
    },
  };
}
