import type { RedisClusterType } from "redis";

/** Number of hash slots of a Redis Cluster. */
const SLOT_COUNT = 16384;

/**
 * Hash tags `keysOnEveryMaster` tries at most. Tags hash to slots at
 * random, so a master that serves a single slot is missed after this many
 * with a probability of e^-64.
 */
const MAX_TAG_TRIES = 1 << 20;

/** CRC16-CCITT in its XMODEM form (polynomial 0x1021, initial value 0), the hash of Redis Cluster. */
function crc16(bytes: Uint8Array): number {
  let crc = 0;
  for (const byte of bytes) {
    crc ^= byte << 8;
    for (let bit = 0; bit < 8; bit += 1) {
      crc = crc & 0x8000 ? (crc << 1) ^ 0x1021 : crc << 1;
      crc &= 0xffff;
    }
  }
  return crc;
}

/**
 * Returns the Redis Cluster hash slot of `key`, as the Redis Cluster
 * specification defines it. The slot is the CRC16 of the key's hash tag,
 * modulo 16384. The hash tag is the text between the first `{` and the
 * next `}`, or the whole key when there is no such text.
 */
export function keySlot(key: string): number {
  let hashed = key;
  const open = key.indexOf("{");
  if (open !== -1) {
    const close = key.indexOf("}", open + 1);
    if (close > open + 1) hashed = key.slice(open + 1, close);
  }
  return crc16(Buffer.from(hashed, "utf8")) % SLOT_COUNT;
}

/**
 * Returns one key per master of `cluster`, in the order of
 * `cluster.masters`: `<baseKey>:{<n>}` with the smallest `n` whose slot
 * the master serves in the client's current view of the slots. Throws
 * when a master serves no slot that a tried tag hashes to.
 */
export function keysOnEveryMaster(
  cluster: RedisClusterType,
  baseKey: string,
): string[] {
  const keys = new Map<string, string>();
  const masters = cluster.masters;
  for (let n = 0; n < MAX_TAG_TRIES && keys.size < masters.length; n += 1) {
    const key = `${baseKey}:{${n}}`;
    const master = cluster.slots[keySlot(key)]?.master;
    if (master !== undefined && !keys.has(master.address)) {
      keys.set(master.address, key);
    }
  }
  return masters.map((master) => {
    const key = keys.get(master.address);
    if (key === undefined) {
      throw new Error(
        `no key of the form ${baseKey}:{<n>} lands on Redis Cluster master ${master.address}`,
      );
    }
    return key;
  });
}
