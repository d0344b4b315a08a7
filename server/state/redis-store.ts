import { createHash } from "node:crypto";
import type { Light } from "../../client-sdk/src/protocol.ts";
import { canonicalLight } from "./lights.ts";
import type {
  BridgeConnection,
  BridgePresenceRecord,
  BridgeStateRecord,
  ClaimResult,
  LightWrite,
  SocketRelease,
  StateStore,
  StoredCommandAnswer,
  WriteResult,
} from "./store.ts";

/**
 * The node-redis commands the store uses. A connected `createClient()` or
 * `createCluster()` result (redis 6.x, RESP2 or RESP3) fits this type.
 */
export interface RedisCommandClient {
  evalSha(sha1: string, options: ScriptOptions): Promise<unknown>;
  eval(script: string, options: ScriptOptions): Promise<unknown>;
  hmGet(key: string, fields: string[]): Promise<unknown>;
  get(key: string): Promise<unknown>;
  set(
    key: string,
    value: string,
    options: { expiration: { type: "PX"; value: number } },
  ): Promise<unknown>;
  ping(): Promise<unknown>;
}

interface ScriptOptions {
  keys: string[];
  arguments: string[];
}

export interface RedisStoreOptions {
  /** Prefix of every key, e.g. `relay`. Distinct prefixes let several relays share one Redis. */
  keyPrefix: string;
  /**
   * Returns the keys that `ping()` writes, given `<prefix>:health`. On
   * Redis Cluster, pass one key per master, so that the check covers
   * every master. Defaults to the given key alone.
   */
  healthCheckKeys?: (baseKey: string) => string[];
  /**
   * Client for claim releases, which may have a longer command limit than
   * the main one. Defaults to the main client.
   */
  releaseClient?: RedisCommandClient;
}

/** Fields of the `meta` hash read for presence, in this order. */
const PRESENCE_FIELDS = ["server", "socket", "epoch", "lastSeen"];

// Each script touches only the keys of one bridge, which share a hash slot,
// so the scripts also run on Redis Cluster. Lua `false` (a missing field)
// reaches the client as null over RESP2 and RESP3 (measured with
// redis-server 7.0 and node-redis 6.4). The parsers accept `false` as well.

/**
 * KEYS: meta. ARGV: serverId, socketId, lastSeen. Returns {epoch,
 * prevServer, prevSocket, prevEpoch}. The replaced connection is kept in
 * `replacedServer` and `replacedSocket` for an undo of this claim.
 */
const CLAIM_SCRIPT = `
local previous = redis.call('HMGET', KEYS[1], 'server', 'socket', 'epoch')
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'server', ARGV[1], 'socket', ARGV[2], 'lastSeen', ARGV[3])
if previous[1] and previous[2] then
  redis.call('HSET', KEYS[1], 'replacedServer', previous[1], 'replacedSocket', previous[2])
else
  redis.call('HDEL', KEYS[1], 'replacedServer', 'replacedSocket')
end
return {epoch, previous[1], previous[2], previous[3]}
`;

/**
 * KEYS: meta. ARGV: serverId, socketId, lastSeen, staleSocketId. Claims
 * like CLAIM_SCRIPT when no connection holds the bridge, or
 * `staleSocketId` does (empty for none), and returns the epoch. Returns
 * the current epoch when `socketId` holds it already, else false.
 */
const CLAIM_IF_FREE_SCRIPT = `
local holder = redis.call('HGET', KEYS[1], 'socket')
if holder == ARGV[2] then
  return tonumber(redis.call('HGET', KEYS[1], 'epoch'))
end
if holder and holder ~= ARGV[4] then
  return false
end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSET', KEYS[1], 'server', ARGV[1], 'socket', ARGV[2], 'lastSeen', ARGV[3])
redis.call('HDEL', KEYS[1], 'replacedServer', 'replacedSocket')
return epoch
`;

/** KEYS: meta. ARGV: socketId, lastSeen. Returns 1 when released, 0 when `socketId` does not hold the bridge. */
const RELEASE_SCRIPT = `
if redis.call('HGET', KEYS[1], 'socket') ~= ARGV[1] then
  return 0
end
redis.call('HDEL', KEYS[1], 'server', 'socket', 'replacedServer', 'replacedSocket')
redis.call('HSET', KEYS[1], 'lastSeen', ARGV[2])
return 1
`;

/**
 * KEYS: meta. ARGV: socketId, lastSeen. Returns {0} when another socket
 * holds the bridge, else {1, epoch, replacedServer, replacedSocket}: the
 * released claim's epoch and the connection that it replaced. The epoch
 * comes before the two fields that may be nil, because Redis ends a Lua
 * array reply at its first nil.
 */
const RELEASE_SOCKET_SCRIPT = `
local current = redis.call('HMGET', KEYS[1], 'socket', 'replacedServer', 'replacedSocket', 'epoch')
if current[1] ~= ARGV[1] then
  return {0}
end
redis.call('HDEL', KEYS[1], 'server', 'socket', 'replacedServer', 'replacedSocket')
redis.call('HSET', KEYS[1], 'lastSeen', ARGV[2])
return {1, tonumber(current[4]), current[2], current[3]}
`;

/**
 * KEYS: meta, lights. ARGV: epoch, expectedVersion, replaceAll ("1" or "0"),
 * then light ID and JSON pairs. Returns {"fenced"}, {"conflict"} or
 * {"written", version}. A missing version counts as 0.
 */
const WRITE_SCRIPT = `
local meta = redis.call('HMGET', KEYS[1], 'epoch', 'version')
if tonumber(meta[1]) ~= tonumber(ARGV[1]) then
  return {'fenced'}
end
if (tonumber(meta[2]) or 0) ~= tonumber(ARGV[2]) then
  return {'conflict'}
end
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[2])
end
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return {'written', redis.call('HINCRBY', KEYS[1], 'version', 1)}
`;

/** KEYS: meta, lights. Returns {{version, server, socket, epoch, lastSeen}, {id, json, id, json, ...}}. */
const GET_STATE_SCRIPT = `
local meta = redis.call('HMGET', KEYS[1], 'version', 'server', 'socket', 'epoch', 'lastSeen')
return {meta, redis.call('HGETALL', KEYS[2])}
`;

/**
 * KEYS: meta, lights. ARGV: light IDs. Returns {version, {json or false, ...}}.
 * It runs one HGET per ID because HMGET would need unpack(), whose argument
 * count Lua limits.
 */
const GET_LIGHTS_SCRIPT = `
local documents = {}
for i = 1, #ARGV do
  documents[i] = redis.call('HGET', KEYS[2], ARGV[i])
end
return {redis.call('HGET', KEYS[1], 'version'), documents}
`;

/** A Lua script with its SHA1 digest, which is what EVALSHA takes. */
class LuaScript {
  readonly sha1: string;

  constructor(readonly source: string) {
    this.sha1 = createHash("sha1").update(source).digest("hex");
  }
}

/**
 * State store in Redis, shared by every relay process of a cluster.
 *
 * Key layout, where all keys of one bridge share the hash tag `{<bridgeId>}`
 * and so one Redis Cluster hash slot:
 * - `<prefix>:{<bridgeId>}:meta`: hash of epoch, version, server, socket, lastSeen
 * - `<prefix>:{<bridgeId>}:lights`: hash of light ID to the light's JSON
 * - `<prefix>:{<bridgeId>}:cmd:<commandId>`: JSON of a command answer, with a PX TTL
 *
 * Redis errors propagate as rejected promises.
 */
export class RedisStore implements StateStore {
  private readonly keyPrefix: string;
  private readonly healthCheckKeys: (baseKey: string) => string[];
  private readonly claimScript = new LuaScript(CLAIM_SCRIPT);
  private readonly claimIfFreeScript = new LuaScript(CLAIM_IF_FREE_SCRIPT);
  private readonly releaseClient: RedisCommandClient;
  private readonly releaseScript = new LuaScript(RELEASE_SCRIPT);
  private readonly writeScript = new LuaScript(WRITE_SCRIPT);
  private readonly getStateScript = new LuaScript(GET_STATE_SCRIPT);
  private readonly getLightsScript = new LuaScript(GET_LIGHTS_SCRIPT);

  /** `client` must be connected already; the caller keeps owning it and quits it. */
  constructor(
    private readonly client: RedisCommandClient,
    options: RedisStoreOptions,
  ) {
    if (options.keyPrefix === "" || /[{}]/.test(options.keyPrefix)) {
      throw new Error(
        `invalid keyPrefix ${JSON.stringify(options.keyPrefix)}: expected a non-empty string without braces`,
      );
    }
    this.keyPrefix = options.keyPrefix;
    this.healthCheckKeys = options.healthCheckKeys ?? ((key) => [key]);
    this.releaseClient = options.releaseClient ?? client;
  }

  async claimConnection(
    bridgeId: string,
    serverId: string,
    socketId: string,
    now: Date,
  ): Promise<ClaimResult> {
    const reply = await this.runScript(
      this.claimScript,
      [this.metaKey(bridgeId)],
      [serverId, socketId, now.toISOString()],
    );
    const [epoch, previousServer, previousSocket, previousEpoch] = asArray(
      reply,
      "claim",
    );
    return {
      epoch: asInteger(epoch, "epoch"),
      previous: parseConnection(previousServer, previousSocket, previousEpoch),
    };
  }

  async claimIfFree(
    bridgeId: string,
    serverId: string,
    socketId: string,
    now: Date,
    staleSocketId = "",
  ): Promise<number | null> {
    const reply = await this.runScript(
      this.claimIfFreeScript,
      [this.metaKey(bridgeId)],
      [serverId, socketId, now.toISOString(), staleSocketId],
    );
    return reply === null || reply === false ? null : asInteger(reply, "claim");
  }

  async releaseConnection(
    bridgeId: string,
    socketId: string,
    now: Date,
  ): Promise<boolean> {
    const reply = await this.runScript(
      this.releaseScript,
      [this.metaKey(bridgeId)],
      [socketId, now.toISOString()],
      this.releaseClient,
    );
    return asInteger(reply, "release") === 1;
  }

  async releaseSocket(
    bridgeId: string,
    socketId: string,
    now: Date,
  ): Promise<SocketRelease> {
    // Sent with its source: this release runs when Redis is slow, and an
    // EVALSHA that Redis answers with NOSCRIPT after the command timed out
    // would never be followed by the EVAL that runs it.
    const reply = await this.releaseClient.eval(RELEASE_SOCKET_SCRIPT, {
      keys: [this.metaKey(bridgeId)],
      arguments: [socketId, now.toISOString()],
    });
    const [released, epoch, replacedServer, replacedSocket] = asArray(
      reply,
      "release",
    );
    if (asInteger(released, "release") !== 1) return { released: false };
    const serverId = asStringOrNull(replacedServer, "replacedServer");
    const replacedSocketId = asStringOrNull(replacedSocket, "replacedSocket");
    const replaced =
      serverId === null || replacedSocketId === null
        ? null
        : { serverId, socketId: replacedSocketId };
    return { released: true, epoch: asInteger(epoch, "epoch"), replaced };
  }

  async getPresence(bridgeIds: string[]): Promise<BridgePresenceRecord[]> {
    // Commands issued in the same tick share one pipeline. Each one reads a
    // single key, because keys of different bridges may sit on different
    // Redis Cluster nodes.
    const replies = await Promise.all(
      bridgeIds.map((bridgeId) =>
        this.client.hmGet(this.metaKey(bridgeId), PRESENCE_FIELDS),
      ),
    );
    return bridgeIds.map((bridgeId, index) => {
      const [server, socket, epoch, lastSeen] = asArray(
        replies[index],
        "presence",
      );
      return {
        bridgeId,
        connection: parseConnection(server, socket, epoch),
        epoch: parseEpoch(epoch),
        lastSeen: asStringOrNull(lastSeen, "lastSeen"),
      };
    });
  }

  async getState(bridgeId: string): Promise<BridgeStateRecord> {
    const reply = await this.runScript(
      this.getStateScript,
      [this.metaKey(bridgeId), this.lightsKey(bridgeId)],
      [],
    );
    const [meta, lightPairs] = asArray(reply, "state");
    const [version, server, socket, epoch, lastSeen] = asArray(
      meta,
      "state meta",
    );
    const pairs = asArray(lightPairs, "state lights");
    const lights: Light[] = [];
    // HGETALL returns fields and values alternately, and only the values are needed.
    for (let index = 1; index < pairs.length; index += 2) {
      lights.push(parseLight(pairs[index]));
    }
    lights.sort(compareById);
    return {
      bridgeId,
      connection: parseConnection(server, socket, epoch),
      epoch: parseEpoch(epoch),
      lastSeen: asStringOrNull(lastSeen, "lastSeen"),
      version: parseVersion(version),
      lights,
    };
  }

  async getLights(
    bridgeId: string,
    lightIds: string[],
  ): Promise<{ version: number; lights: (Light | null)[] }> {
    const reply = await this.runScript(
      this.getLightsScript,
      [this.metaKey(bridgeId), this.lightsKey(bridgeId)],
      lightIds,
    );
    const [version, documents] = asArray(reply, "lights");
    const lights = asArray(documents, "lights").map((document) =>
      isMissing(document) ? null : parseLight(document),
    );
    return { version: parseVersion(version), lights };
  }

  async writeLights(bridgeId: string, write: LightWrite): Promise<WriteResult> {
    const args = [
      String(write.epoch),
      String(write.expectedVersion),
      write.replaceAll ? "1" : "0",
    ];
    for (const light of write.lights) {
      args.push(light.id, JSON.stringify(canonicalLight(light)));
    }
    const reply = await this.runScript(
      this.writeScript,
      [this.metaKey(bridgeId), this.lightsKey(bridgeId)],
      args,
    );
    const [status, version] = asArray(reply, "write");
    if (status === "fenced" || status === "conflict") return { status };
    if (status === "written") {
      return { status, version: asInteger(version, "version") };
    }
    throw new Error(`unexpected write script status ${JSON.stringify(status)}`);
  }

  async getCommandAnswer(
    bridgeId: string,
    commandId: string,
  ): Promise<StoredCommandAnswer | null> {
    const reply = await this.client.get(this.commandKey(bridgeId, commandId));
    if (isMissing(reply)) return null;
    return parseCommandAnswer(reply);
  }

  async putCommandAnswer(
    bridgeId: string,
    commandId: string,
    answer: StoredCommandAnswer,
    ttlMs: number,
  ): Promise<void> {
    if (!Number.isFinite(ttlMs) || ttlMs <= 0) {
      throw new RangeError(
        `invalid ttlMs ${ttlMs}: expected a positive number of milliseconds`,
      );
    }
    const stored: StoredCommandAnswer = answer.ok
      ? { ok: true, light: canonicalLight(answer.light) }
      : {
          ok: false,
          details: {
            code: answer.details.code,
            message: answer.details.message,
          },
        };
    // In the same value as the answer, so that reading it costs no extra
    // round trip. Older relays ignore the field.
    if (answer.fingerprint !== undefined) {
      stored.fingerprint = answer.fingerprint;
    }
    await this.client.set(
      this.commandKey(bridgeId, commandId),
      JSON.stringify(stored),
      {
        expiration: { type: "PX", value: Math.ceil(ttlMs) },
      },
    );
  }

  /**
   * Writes a short-lived key rather than sending PING, so that a Redis that
   * answers but rejects writes (out of memory, a read-only replica) fails
   * the check as well.
   */
  async ping(): Promise<void> {
    const keys = this.healthCheckKeys(`${this.keyPrefix}:health`);
    await Promise.all(
      keys.map((key) =>
        this.client.set(key, "1", {
          expiration: { type: "PX", value: 60_000 },
        }),
      ),
    );
  }

  /** Does nothing: the store owns no resource, and the caller quits the client. */
  async close(): Promise<void> {}

  /**
   * Runs a script by its SHA1. When Redis does not have it (NOSCRIPT, e.g.
   * after a restart or on another cluster node), sends the source with EVAL,
   * which also caches it for the next EVALSHA.
   */
  private async runScript(
    script: LuaScript,
    keys: string[],
    args: string[],
    client = this.client,
  ): Promise<unknown> {
    const options = { keys, arguments: args };
    try {
      return await client.evalSha(script.sha1, options);
    } catch (error) {
      if (!isNoScriptError(error)) throw error;
      return await client.eval(script.source, options);
    }
  }

  private bridgeKeyBase(bridgeId: string): string {
    // A brace in the ID would change the hash tag and split the bridge's keys.
    if (/[{}]/.test(bridgeId)) {
      throw new Error(
        `invalid bridge ID ${JSON.stringify(bridgeId)}: expected the lowercase 16-digit form`,
      );
    }
    return `${this.keyPrefix}:{${bridgeId}}`;
  }

  private metaKey(bridgeId: string): string {
    return `${this.bridgeKeyBase(bridgeId)}:meta`;
  }

  private lightsKey(bridgeId: string): string {
    return `${this.bridgeKeyBase(bridgeId)}:lights`;
  }

  private commandKey(bridgeId: string, commandId: string): string {
    return `${this.bridgeKeyBase(bridgeId)}:cmd:${commandId}`;
  }
}

/** Tells whether Redis rejected EVALSHA because its script cache lacks the script. */
function isNoScriptError(error: unknown): boolean {
  return error instanceof Error && error.message.startsWith("NOSCRIPT");
}

function isMissing(value: unknown): boolean {
  return value === null || value === undefined || value === false;
}

function asArray(value: unknown, replyName: string): unknown[] {
  if (!Array.isArray(value)) {
    throw new Error(
      `unexpected Redis reply for ${replyName}: expected an array`,
    );
  }
  return value;
}

function asInteger(value: unknown, replyName: string): number {
  const number = typeof value === "string" ? Number(value) : value;
  if (typeof number !== "number" || !Number.isSafeInteger(number)) {
    throw new Error(
      `unexpected Redis reply for ${replyName}: expected an integer`,
    );
  }
  return number;
}

function asStringOrNull(value: unknown, replyName: string): string | null {
  if (isMissing(value)) return null;
  if (typeof value !== "string") {
    throw new Error(
      `unexpected Redis reply for ${replyName}: expected a string`,
    );
  }
  return value;
}

function parseVersion(value: unknown): number {
  return isMissing(value) ? 0 : asInteger(value, "version");
}

function parseEpoch(value: unknown): number {
  return isMissing(value) ? 0 : asInteger(value, "epoch");
}

/** Builds the connection from `meta` fields, or null (offline) when no socket is stored. */
function parseConnection(
  server: unknown,
  socket: unknown,
  epoch: unknown,
): BridgeConnection | null {
  const socketId = asStringOrNull(socket, "socket");
  if (socketId === null) return null;
  const serverId = asStringOrNull(server, "server");
  if (serverId === null) {
    throw new Error(`stored connection of socket ${socketId} has no server ID`);
  }
  return { serverId, socketId, epoch: asInteger(epoch, "epoch") };
}

function parseLight(value: unknown): Light {
  if (typeof value !== "string") {
    throw new Error(
      "unexpected Redis reply for a light: expected a JSON string",
    );
  }
  return canonicalLight(JSON.parse(value) as Light);
}

function parseCommandAnswer(value: unknown): StoredCommandAnswer {
  if (typeof value !== "string") {
    throw new Error(
      "unexpected Redis reply for a command answer: expected a JSON string",
    );
  }
  const answer = JSON.parse(value) as StoredCommandAnswer;
  const parsed: StoredCommandAnswer = answer.ok
    ? { ok: true, light: canonicalLight(answer.light) }
    : { ok: false, details: answer.details };
  // An answer stored by an older relay has no fingerprint.
  if (typeof answer.fingerprint === "string") {
    parsed.fingerprint = answer.fingerprint;
  }
  return parsed;
}

/** Orders lights by ID in UTF-16 code unit order, the same in every locale. */
function compareById(a: Light, b: Light): number {
  if (a.id < b.id) return -1;
  return a.id > b.id ? 1 : 0;
}
