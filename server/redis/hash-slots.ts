import calculateSlot from "cluster-key-slot";
import type { RedisClusterType } from "redis";

/**
 * Hash tags `keysOnEveryMaster` tries at most. Tags hash to slots at
 * random, so a master that serves a single slot is missed after this many
 * with a probability of e^-64.
 */
const MAX_TAG_TRIES = 1 << 20;

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
    const master = cluster.slots[calculateSlot(key)]?.master;
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
