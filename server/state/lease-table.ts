import type { RedisCommandClient } from "./redis-store.ts";

/** Outcome of a lease renewal. */
export type RenewResult =
  /** The lease was alive and now runs for another TTL. */
  | "renewed"
  /**
   * The lease had expired or was missing (Redis restarted empty, or this
   * process was cut off for longer than the TTL) and is taken again. Other
   * processes may have released this process's bridges meanwhile, so every
   * local claim must be checked again.
   */
  | "restored"
  /** Another process is sweeping this process's connections; try again later. */
  | "sweeping";

/** The node-redis commands the lease table uses, on top of the store's. */
export interface LeaseCommandClient extends RedisCommandClient {
  sAdd(key: string, members: string | string[]): Promise<unknown>;
  sRem(key: string, members: string | string[]): Promise<unknown>;
  sScan(
    key: string,
    cursor: string,
    options: { COUNT: number },
  ): Promise<{ cursor: string; members: string[] }>;
  del(key: string): Promise<unknown>;
}

// The lease sorted set and the sweep locks share the hash tag `{leases}`, so
// the scripts that touch both also run on Redis Cluster. Expiry times come
// from the Redis server's clock (TIME), so relay machines whose clocks
// disagree still agree on which lease has expired.

/** Lua snippet: the Redis server's time in whole milliseconds. */
const NOW_MS = `
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
`;

/** KEYS: leases, sweep lock. ARGV: serverId, ttlMs. Returns renewed, restored or sweeping. */
const RENEW_SCRIPT = `${NOW_MS}
local expiry = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if expiry and expiry > now then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  return 'renewed'
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 'sweeping'
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 'restored'
`;

/** KEYS: leases. ARGV: limit. Returns the IDs of up to `limit` servers whose lease has expired. */
const EXPIRED_SCRIPT = `${NOW_MS}
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
`;

/**
 * KEYS: leases, sweep lock. ARGV: serverId, lockMs. Returns 1 when the
 * caller may sweep: the lease is still expired and no one else sweeps it.
 */
const BEGIN_SWEEP_SCRIPT = `${NOW_MS}
local expiry = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if not expiry or expiry > now then
  return 0
end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', tonumber(ARGV[2])) then
  return 1
end
return 0
`;

/** KEYS: leases, sweep lock. ARGV: serverId. Drops a swept lease unless it was renewed meanwhile. */
const END_SWEEP_SCRIPT = `${NOW_MS}
local expiry = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if expiry and expiry <= now then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
redis.call('DEL', KEYS[2])
return 1
`;

/**
 * Presence leases in Redis. Each relay process holds one lease with a TTL
 * and renews it while it lives; every bridge connection it claims hangs on
 * that lease. A process that dies without running its disconnect handlers
 * (kill -9, a lost machine) stops renewing, and once the lease has expired
 * another process sweeps its connections offline. One lease per process
 * costs one renewal per heartbeat, where one per connection would cost one
 * per bridge.
 *
 * Keys:
 * - `<prefix>:{leases}:servers`: sorted set of server ID by expiry time (ms)
 * - `<prefix>:{leases}:sweep:<serverId>`: lock held while a sweep runs
 * - `<prefix>:server:{<serverId>}:bridges`: set of the bridge IDs the server
 *   may hold; a superset, because a sweep checks each bridge's epoch
 */
export class RedisLeaseTable {
  private readonly leasesKey: string;

  constructor(
    private readonly client: LeaseCommandClient,
    private readonly keyPrefix: string,
  ) {
    this.leasesKey = `${keyPrefix}:{leases}:servers`;
  }

  async renew(serverId: string, ttlMs: number): Promise<RenewResult> {
    const reply = await this.run(
      RENEW_SCRIPT,
      [this.leasesKey, this.sweepLockKey(serverId)],
      [serverId, String(Math.ceil(ttlMs))],
    );
    if (reply === "renewed" || reply === "restored" || reply === "sweeping") {
      return reply;
    }
    throw new Error(
      `unexpected Redis reply for lease renewal: ${JSON.stringify(reply)}`,
    );
  }

  /** IDs of up to `limit` servers whose lease has expired. */
  async listExpired(limit: number): Promise<string[]> {
    const reply = await this.run(
      EXPIRED_SCRIPT,
      [this.leasesKey],
      [String(limit)],
    );
    if (!Array.isArray(reply) || !reply.every((id) => typeof id === "string")) {
      throw new Error("unexpected Redis reply for expired leases");
    }
    return reply;
  }

  /** Takes the sweep of an expired server for `lockMs`; false when it is not due or taken. */
  async beginSweep(serverId: string, lockMs: number): Promise<boolean> {
    const reply = await this.run(
      BEGIN_SWEEP_SCRIPT,
      [this.leasesKey, this.sweepLockKey(serverId)],
      [serverId, String(Math.ceil(lockMs))],
    );
    return Number(reply) === 1;
  }

  /** Forgets a swept server: its lease (unless renewed meanwhile), lock and bridge set. */
  async endSweep(serverId: string): Promise<void> {
    await this.client.del(this.bridgesKey(serverId));
    await this.run(
      END_SWEEP_SCRIPT,
      [this.leasesKey, this.sweepLockKey(serverId)],
      [serverId],
    );
  }

  /** Drops the lease of a server that closed all its connections itself. */
  async drop(serverId: string): Promise<void> {
    await this.client.del(this.bridgesKey(serverId));
    await this.client.eval("return redis.call('ZREM', KEYS[1], ARGV[1])", {
      keys: [this.leasesKey],
      arguments: [serverId],
    });
  }

  /** Adds bridges to the set a sweep of `serverId` goes through. */
  async track(serverId: string, bridgeIds: string[]): Promise<void> {
    if (bridgeIds.length === 0) return;
    await this.client.sAdd(this.bridgesKey(serverId), bridgeIds);
  }

  async untrack(serverId: string, bridgeId: string): Promise<void> {
    await this.client.sRem(this.bridgesKey(serverId), bridgeId);
  }

  /** One page of the bridges tracked for `serverId`; the cursor is "0" after the last page. */
  async scanTracked(
    serverId: string,
    cursor: string,
    count: number,
  ): Promise<{ cursor: string; bridgeIds: string[] }> {
    const page = await this.client.sScan(this.bridgesKey(serverId), cursor, {
      COUNT: count,
    });
    return { cursor: String(page.cursor), bridgeIds: page.members };
  }

  private sweepLockKey(serverId: string): string {
    return `${this.keyPrefix}:{leases}:sweep:${serverId}`;
  }

  private bridgesKey(serverId: string): string {
    return `${this.keyPrefix}:server:{${serverId}}:bridges`;
  }

  /** Runs a short script with EVAL; these run once per heartbeat, not per request. */
  private run(script: string, keys: string[], args: string[]) {
    return this.client.eval(script, { keys, arguments: args });
  }
}
