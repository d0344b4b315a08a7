import type { Logger } from "../logger.ts";
import type { ConnectionState } from "../redis/connection-state.ts";

/** The node-redis commands the marker uses, which a client or a cluster client has. */
export interface MarkerClient {
  exists(key: string): Promise<number>;
  del(key: string): Promise<number>;
  set(
    key: string,
    value: string,
    options?: { expiration?: { type: "PX"; value: number } },
  ): Promise<unknown>;
}

/**
 * Time a marker lives without renewal, in ms. A process renews it every
 * half of this while its subscriber is down, so the marker of a process
 * that died is gone within this time.
 */
export const UNSUBSCRIBED_MARKER_TTL_MS = 10_000;

/** Returns the marker key of `serverId`. */
function markerKey(keyPrefix: string, serverId: string): string {
  return `${keyPrefix}:server:${serverId}:unsubscribed`;
}

/**
 * Marks in Redis that a running process has lost the subscription on
 * which it receives commands, while its main connection works. A command
 * that then reaches no receiver names a bridge that may still be
 * connected to that process, which a crashed process's marker-less
 * silence does not. The marker is written whenever the main connection
 * works and the subscriber does not, and deleted once the subscriber is
 * back.
 */
export class UnsubscribedMarker {
  private readonly key: string;
  private renewal: NodeJS.Timeout | undefined;

  constructor(
    private readonly client: MarkerClient,
    keyPrefix: string,
    private readonly serverId: string,
    private readonly logger: Logger,
    private readonly ttlMs = UNSUBSCRIBED_MARKER_TTL_MS,
  ) {
    this.key = markerKey(keyPrefix, serverId);
  }

  /** Writes and deletes the marker as the two connections drop and return. */
  watch(main: ConnectionState, subscriber: ConnectionState): void {
    subscriber.onReconnecting(() => this.mark());
    main.onReconnected(() => {
      if (!subscriber.isReady()) this.mark();
    });
    subscriber.onReconnected(() => this.clear());
  }

  /**
   * Writes the marker now, and renews it every half TTL until `clear`. A
   * write fails while the main connection is down too, so the return of
   * that connection writes it again.
   */
  private mark(): void {
    this.write();
    if (this.renewal !== undefined) return;
    this.renewal = setInterval(() => this.write(), this.ttlMs / 2);
    this.renewal.unref();
  }

  private write(): void {
    this.client
      .set(this.key, "1", { expiration: { type: "PX", value: this.ttlMs } })
      .catch(() => {
        // The main connection is down too, and its return writes it again.
      });
  }

  private clear(): void {
    clearInterval(this.renewal);
    this.renewal = undefined;
    this.client.del(this.key).catch((error: unknown) => {
      // The marker expires within its TTL. Until then, commands that reach
      // no receiver here get UNAVAILABLE rather than BRIDGE_OFFLINE.
      this.logger.warn(
        { err: error, serverId: this.serverId },
        "could not delete the marker of a lost subscription",
      );
    });
  }

  /** Stops renewing the marker, on shutdown. */
  stop(): void {
    clearInterval(this.renewal);
    this.renewal = undefined;
  }
}

/**
 * Returns a check of whether process `serverId` has marked its
 * subscription lost. A failed read counts as not marked.
 */
export function unsubscribedCheck(
  client: Pick<MarkerClient, "exists">,
  keyPrefix: string,
): (serverId: string) => Promise<boolean> {
  return async (serverId) => {
    try {
      return (await client.exists(markerKey(keyPrefix, serverId))) === 1;
    } catch {
      return false;
    }
  };
}
