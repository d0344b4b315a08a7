import type { RedisClientType, RedisClusterType } from "redis";

/** A node-redis client of the relay: for one Redis server, or for a Redis Cluster. */
export type RelayRedisClient = RedisClientType | RedisClusterType;

/**
 * Connection state of one node-redis client. A client for one Redis server
 * has one connection. A cluster client has one per node it uses, and is
 * ready only while all of them are.
 */
export interface ConnectionState {
  /** Whether every connection of the client is ready for commands. */
  isReady(): boolean;
  /** Calls `listener` each time a connection that dropped is ready again. */
  onReconnected(listener: () => void): void;
  /**
   * Calls `listener` each time a ready connection drops, and again before
   * each later attempt to connect it.
   */
  onReconnecting(listener: () => void): void;
}

/** Returns the connection state of a client for one Redis server. */
export function serverConnectionState(
  client: RedisClientType,
): ConnectionState {
  return {
    isReady: () => client.isReady,
    onReconnected: (listener) => {
      let dropped = false;
      client.on("reconnecting", () => {
        dropped = true;
      });
      client.on("ready", () => {
        if (!dropped) return;
        dropped = false;
        listener();
      });
    },
    onReconnecting: (listener) => {
      client.on("reconnecting", listener);
    },
  };
}
