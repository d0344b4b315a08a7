import type { RedisClientType, RedisClusterType } from "redis";
import type { ConnectionState } from "./connection-state.ts";

/** Host and port of a cluster node, as node-redis passes them with its `node-*` events. */
interface NodeAddress {
  host: string;
  port: number;
}

/** Returns `host:port`, the form node-redis uses as a node's address. */
export function nodeAddress({ host, port }: NodeAddress): string {
  return `${host}:${port}`;
}

/** Returns the command connection of each master, or undefined where none exists yet. */
export function commandConnections(
  cluster: RedisClusterType,
): (RedisClientType | undefined)[] {
  return cluster.masters.map((master) => master.client);
}

/**
 * Returns the sharded pub/sub connection of each master that has one.
 * node-redis opens it on the first SSUBSCRIBE to a channel of the master's
 * slots, and closes it once the master has no such channel left.
 */
export function shardedPubSubConnections(
  cluster: RedisClusterType,
): RedisClientType[] {
  return cluster.masters.flatMap((master) =>
    master.pubSub === undefined ? [] : [master.pubSub.client],
  );
}

/**
 * Returns the connection state of a cluster client, made of the node
 * connections that `connections` returns.
 *
 * A node connection that node-redis opens for the first time (a shard's
 * pub/sub connection on its first channel) is not a reconnect. Once one
 * dropped, though, the next node that turns ready counts as one, even at
 * another address: after a failover the connection to the old master
 * never comes back, and its replacement is the connection to the new one.
 */
export function clusterConnectionState(
  cluster: RedisClusterType,
  connections: (cluster: RedisClusterType) => (RedisClientType | undefined)[],
): ConnectionState {
  return {
    isReady: () =>
      cluster.isReady &&
      connections(cluster).every((client) => client?.isReady === true),
    onReconnected: (listener) => {
      const dropped = new Set<string>();
      cluster.on("node-reconnecting", (node: NodeAddress) => {
        dropped.add(nodeAddress(node));
      });
      cluster.on("node-ready", (node: NodeAddress) => {
        if (dropped.size === 0) return;
        dropped.delete(nodeAddress(node));
        forgetRemovedNodes(cluster, dropped);
        listener();
      });
    },
    onReconnecting: (listener) => {
      cluster.on("node-reconnecting", listener);
    },
  };
}

/** Drops the addresses of nodes that left the cluster's topology, which never turn ready again. */
function forgetRemovedNodes(
  cluster: RedisClusterType,
  addresses: Set<string>,
): void {
  for (const address of addresses) {
    if (!cluster.nodeByAddress.has(address)) addresses.delete(address);
  }
}
