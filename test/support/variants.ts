import { startRedisServer, type RedisServer } from "./redis-server.ts";
import { startRelay, type RelayProcess } from "./relay-process.ts";

/** Environment shared by the relays of the contract suite: small limits, so tests can reach them. */
export const CONTRACT_ENV = {
  HANDSHAKES_PER_IDENTITY_PER_MINUTE: "40",
  REQUESTS_PER_SOCKET_PER_10S: "150",
  COMMAND_TIMEOUT_MS: "1500",
};

export interface Deployment {
  relays: RelayProcess[];
  redis: RedisServer | undefined;
  stop: () => Promise<void>;
}

export interface Variant {
  name: string;
  clustered: boolean;
  start: () => Promise<Deployment>;
}

/**
 * Starts `instances` relays of `workers` workers each on one Redis: a new
 * private one, or `shared`, which is then left running on stop.
 */
async function deploy(
  instances: number,
  workers: number,
  shared?: RedisServer,
): Promise<Deployment> {
  const redis = shared ?? (await startRedisServer());
  const stopRedis = async (): Promise<void> => {
    if (shared === undefined) await redis.stop();
  };
  const relays: RelayProcess[] = [];
  try {
    for (let index = 0; index < instances; index += 1) {
      relays.push(
        await startRelay({ redisUrl: redis.url, workers, env: CONTRACT_ENV }),
      );
    }
  } catch (error) {
    await Promise.all(relays.map((relay) => relay.stop()));
    await stopRedis();
    throw error;
  }
  return {
    relays,
    redis,
    stop: async () => {
      await Promise.all(relays.map((relay) => relay.stop()));
      await stopRedis();
    },
  };
}

/** The deployments the contract suite runs on. */
export const VARIANTS: Variant[] = [
  {
    name: "embedded",
    clustered: false,
    start: async () => {
      const relay = await startRelay({ env: CONTRACT_ENV });
      return {
        relays: [relay],
        redis: undefined,
        stop: async () => void (await relay.stop()),
      };
    },
  },
  { name: "redis, 2 workers", clustered: true, start: () => deploy(1, 2) },
];

export { deploy };
