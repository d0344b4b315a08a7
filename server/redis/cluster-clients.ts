import { createCluster, type RedisClusterType } from "redis";
import type { Logger } from "../logger.ts";
import { redisErrors, redisReconnects } from "../metrics/relay-metrics.ts";
import {
  commandDeadline,
  limitedClients,
  reconnectDelay,
  subscriptionsUnavailable,
  type RedisClients,
} from "./clients.ts";
import {
  clusterConnectionState,
  commandConnections,
  nodeAddress,
  shardedPubSubConnections,
} from "./cluster-state.ts";
import { keysOnEveryMaster } from "./hash-slots.ts";
import {
  retryShardedSubscriptions,
  type ShardedRequests,
} from "./sharded-subscriptions.ts";

/**
 * Time `awaitSubscriptions` waits for sharded subscription requests in
 * flight, in ms. A request waits for a new connection when its shard had
 * no channel of this process yet, and a shard that is down keeps that
 * connection trying.
 */
const SUBSCRIPTION_WAIT_MS = 1000;

/**
 * Time after a node connection starts reconnecting before the client
 * reads the cluster's topology again, in ms (node-redis's default is 5 s).
 * node-redis reads it at the first reconnection attempt after that time.
 * Once a replica has taken over a failed master, that read moves the
 * master's slots to it. So node connections also retry at least this
 * often: with 5 s between attempts, a promoted replica stayed unused for
 * up to 5 s.
 */
const TOPOLOGY_REFRESH_MS = 1000;

type NodeEventAddress = Parameters<typeof nodeAddress>[0];

/**
 * Counts and logs the errors and reconnects of a cluster client's node
 * connections, like `watch` does for one connection, for each node apart.
 * Errors of the cluster itself (topology discovery) count under the node
 * `topology`. Without the `error` listener, such an error would crash the
 * process, because an EventEmitter throws an `error` event that has no
 * listener.
 */
function watchCluster(
  cluster: RedisClusterType,
  role: string,
  logger: Logger,
  onError?: (error: unknown) => void,
): void {
  const failures = new Map<string, number>();
  const countFailure = (error: unknown, node: string): void => {
    onError?.(error);
    const count = (failures.get(node) ?? 0) + 1;
    failures.set(node, count);
    redisErrors.inc({ role });
    // Log the first failure and then one in 50, so an outage does not flood the log.
    if (count === 1 || count % 50 === 0) {
      logger.error(
        { err: error, connection: role, node, failures: count },
        "redis connection error",
      );
    }
  };
  cluster.on("error", (error: unknown) => countFailure(error, "topology"));
  cluster.on("node-error", (error: unknown, node: NodeEventAddress) =>
    countFailure(error, nodeAddress(node)),
  );
  cluster.on("node-reconnecting", (node: NodeEventAddress) => {
    redisReconnects.inc({ role });
    logger.debug(
      { connection: role, node: nodeAddress(node) },
      "reconnecting to redis",
    );
  });
  cluster.on("node-ready", (node: NodeEventAddress) => {
    const address = nodeAddress(node);
    const count = failures.get(address) ?? 0;
    if (count > 0) {
      logger.info(
        { connection: role, node: address, failures: count },
        "redis connection restored",
      );
    }
    failures.delete(address);
  });
}

/**
 * Settings of every node connection: those of a single-server client, and
 * the credentials and scheme of the seed URL. node-redis takes the seeds'
 * settings only for the first topology query, so they go into `defaults`
 * too. With rediss:// every node connection uses TLS, verified against
 * Node's trusted certificates (add a private CA with NODE_EXTRA_CA_CERTS).
 */
function nodeDefaults(seedUrl: string) {
  const { username, password, protocol } = new URL(seedUrl);
  const reconnectStrategy = (retries: number): number =>
    reconnectDelay(retries, Math.random, TOPOLOGY_REFRESH_MS);
  return {
    disableOfflineQueue: true,
    ...(username === "" ? {} : { username: decodeURIComponent(username) }),
    ...(password === "" ? {} : { password: decodeURIComponent(password) }),
    socket:
      protocol === "rediss:"
        ? { tls: true as const, reconnectStrategy }
        : { reconnectStrategy },
  };
}

/**
 * Connects `cluster`, trying again after `reconnectDelay` while no seed
 * node responds, as a single-server client keeps trying its first
 * connection.
 */
async function connectUntilReady(
  cluster: RedisClusterType,
  role: string,
  seeds: string[],
  logger: Logger,
  onError?: (error: unknown) => void,
): Promise<void> {
  for (let attempt = 0; ; attempt += 1) {
    try {
      await cluster.connect();
      return;
    } catch (error) {
      onError?.(error);
      const delayMs = reconnectDelay(attempt);
      logger.warn(
        { err: error, connection: role, seeds, attempt, delayMs },
        "could not read the Redis Cluster topology from any seed node, trying again",
      );
      await new Promise((resolve) => setTimeout(resolve, delayMs));
    }
  }
}

/** Resolves within SUBSCRIPTION_WAIT_MS as `requests.settle()` does, or with false after it. */
async function settleWithin(requests: ShardedRequests): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), SUBSCRIPTION_WAIT_MS);
  });
  try {
    return await Promise.race([requests.settle(), timedOut]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Resolves once Redis has replied to the subscription requests sent so
 * far and every shard's pub/sub connection replies to PING. Each shard
 * has its own connection, so one PING no longer follows every SSUBSCRIBE
 * as it does on a single server, and the requests are awaited instead.
 */
async function awaitShardSubscriptions(
  subscriber: RedisClusterType,
  requests: ShardedRequests,
): Promise<void> {
  if (!(await settleWithin(requests))) throw subscriptionsUnavailable();
  try {
    await Promise.all(
      shardedPubSubConnections(subscriber).map((client) => client.ping()),
    );
  } catch {
    throw subscriptionsUnavailable();
  }
}

/**
 * Connects the two Redis clients a relay process needs to the Redis
 * Cluster that `nodeUrls` (seed nodes) belong to. As with one server,
 * commands fail at once while their node is unreachable, and the node
 * connections keep reconnecting. `onError` receives every connection
 * error, also those left out of the log.
 */
export async function connectRedisCluster(
  nodeUrls: [string, ...string[]],
  commandTimeoutMs: number,
  logger: Logger,
  onError?: (error: unknown) => void,
): Promise<RedisClients<RedisClusterType>> {
  const main = createCluster({
    rootNodes: nodeUrls.map((url) => ({ url })),
    defaults: nodeDefaults(nodeUrls[0]),
    topologyRefreshOnReconnectionAttemptStrategy: TOPOLOGY_REFRESH_MS,
    commandOptions: commandDeadline(commandTimeoutMs),
  });
  // The subscriber opens no command connections, only one pub/sub
  // connection per shard that carries a channel of this process.
  const subscriber = main.duplicate({
    minimizeConnections: true,
    commandOptions: {},
  });
  watchCluster(main, "main", logger, onError);
  watchCluster(subscriber, "subscriber", logger, onError);
  const requests = retryShardedSubscriptions(
    subscriber,
    (listener) => subscriber.on("node-ready", listener),
    logger,
  );
  // Host and port only, because a seed URL may carry a password.
  const seeds = nodeUrls.map((url) => new URL(url).host);
  await Promise.all([
    connectUntilReady(main, "main", seeds, logger, onError),
    connectUntilReady(subscriber, "subscriber", seeds, logger, onError),
  ]);
  return {
    main,
    ...limitedClients(main, commandTimeoutMs),
    subscriber,
    mainState: clusterConnectionState(main, commandConnections),
    subscriberState: clusterConnectionState(
      subscriber,
      shardedPubSubConnections,
    ),
    awaitSubscriptions: () => awaitShardSubscriptions(subscriber, requests),
    keysOnEveryMaster: (baseKey) => keysOnEveryMaster(main, baseKey),
    close: async () => {
      await Promise.allSettled([main.close(), subscriber.close()]);
    },
  };
}
