import { RelayError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import type { ConnectionState } from "../redis/connection-state.ts";

/** The node-redis commands the window uses, which a client or a cluster client has. */
export interface DataLossClient {
  exists(key: string): Promise<number>;
  get(key: string): Promise<unknown>;
  set(
    key: string,
    value: string,
    options?: {
      condition?: "NX";
      expiration?: { type: "PX"; value: number };
    },
  ): Promise<unknown>;
}

export interface DataLossWindowOptions {
  client: DataLossClient;
  /** Prefix of the keys, as in the state store. */
  keyPrefix: string;
  /**
   * Returns the sentinel keys, given `<prefix>:data-sentinel`: that key for
   * one Redis server, one key per master on Redis Cluster, so that a master
   * that lost its data is noticed as well.
   */
  sentinelKeys: (baseKey: string) => string[];
  /** How long the window stays open after data loss is noticed, in ms. */
  windowMs: number;
  /** Written into the sentinel keys, to show which process wrote them. */
  serverId: string;
  logger: Logger;
}

/** Time between attempts of a check that failed, in ms. */
const CHECK_RETRY_MS = 1000;

/**
 * Notices that Redis lost its data (it restarted empty) and opens a
 * window, shared by every relay process, during which a bridge that has no
 * record at all may still be connected. Each process records every bridge
 * socket it has as a claim in Redis. It makes the claims again only once
 * both of its Redis connections are back, so for a while after the
 * restart a connected bridge reads as never seen.
 *
 * Every process writes a sentinel key at start, and checks it each time
 * its main connection is ready again. The first process that finds it
 * missing sets the marker key `<prefix>:data-loss-window` with a TTL of
 * `windowMs`, then writes the sentinel again. The marker comes first, so
 * a process that stops between the two leaves the sentinel missing for
 * the next check instead of a lost window.
 */
export class DataLossWindow {
  private readonly sentinelBaseKey: string;
  private readonly markerKey: string;
  /** False from a drop of the main connection until the check after it succeeded. */
  private checked = false;
  private retry: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(private readonly options: DataLossWindowOptions) {
    this.sentinelBaseKey = `${options.keyPrefix}:data-sentinel`;
    this.markerKey = `${options.keyPrefix}:data-loss-window`;
  }

  /**
   * Writes the sentinel keys that are missing. Call it before the process
   * serves requests. NOTE: a process that starts against a Redis that lost
   * its data writes the sentinel without opening the window, because a
   * Redis that was never used looks the same. When it does so before the
   * other processes reconnect, they find the sentinel and open no window.
   */
  async start(): Promise<void> {
    await this.writeSentinels();
    this.checked = true;
  }

  /** Checks the sentinel each time the main connection is ready again. */
  watch(main: Pick<ConnectionState, "onReconnected" | "onReconnecting">): void {
    main.onReconnecting(() => {
      this.checked = false;
    });
    main.onReconnected(() => {
      this.scheduleCheck(0);
    });
  }

  /**
   * Returns true while the window is open, or while this process has not
   * yet checked the sentinel since its main connection came back. Rejects
   * with `UNAVAILABLE` when the read of the marker fails. Only the requests that
   * found no claim call it, so it costs nothing on the usual path.
   */
  async isOpen(): Promise<boolean> {
    if (!this.checked) return true;
    let marker: unknown;
    try {
      marker = await this.options.client.get(this.markerKey);
    } catch {
      throw new RelayError(
        "UNAVAILABLE",
        "state store is unavailable, retry later",
      );
    }
    return marker !== null && marker !== undefined;
  }

  /** Stops checking, before the Redis clients close. */
  stop(): void {
    this.stopped = true;
    clearTimeout(this.retry);
    this.retry = undefined;
  }

  private scheduleCheck(delayMs: number): void {
    if (this.stopped) return;
    clearTimeout(this.retry);
    this.retry = setTimeout(() => {
      this.retry = undefined;
      void this.check();
    }, delayMs);
    this.retry.unref();
  }

  private async check(): Promise<void> {
    try {
      await this.checkNow();
      this.checked = true;
    } catch (error) {
      // `checked` stays false, so requests that find no claim get
      // UNAVAILABLE until a check succeeds.
      this.options.logger.warn(
        { err: error, retryInMs: CHECK_RETRY_MS },
        "could not check whether Redis lost its data, retrying",
      );
      this.scheduleCheck(CHECK_RETRY_MS);
    }
  }

  private async checkNow(): Promise<void> {
    const { client, windowMs, logger } = this.options;
    const keys = this.options.sentinelKeys(this.sentinelBaseKey);
    const found = await Promise.all(keys.map((key) => client.exists(key)));
    const missing = keys.filter((_key, index) => found[index] === 0);
    if (missing.length === 0) return;
    await client.set(this.markerKey, this.options.serverId, {
      expiration: { type: "PX", value: windowMs },
    });
    await this.writeSentinels();
    logger.warn(
      { missingSentinels: missing, windowMs },
      "Redis lost its data; bridges without a record answer UNAVAILABLE instead of BRIDGE_OFFLINE until every relay process has claimed its bridges again",
    );
  }

  private async writeSentinels(): Promise<void> {
    const { client, serverId } = this.options;
    const value = `${serverId} ${new Date().toISOString()}`;
    const keys = this.options.sentinelKeys(this.sentinelBaseKey);
    await Promise.all(
      keys.map((key) => client.set(key, value, { condition: "NX" })),
    );
  }
}
