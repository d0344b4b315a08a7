import { randomBytes } from "node:crypto";
import type { AddressInfo } from "node:net";
import type { RelayConfig } from "./config.ts";
import type { Logger } from "./logger.ts";
import { LocalBus } from "./messaging/server-bus.ts";
import { createRelay, type Relay } from "./relay/create-relay.ts";
import { capRelayConnections, servedAtCap } from "./cluster/connection-cap.ts";
import { listenOn } from "./http/listen.ts";
import { installShutdown } from "./cluster/shutdown.ts";
import {
  closeStalledConnections,
  HEADERS_TIMEOUT_MS,
} from "./cluster/stalled-connections.ts";
import { MemoryStore } from "./state/memory-store.ts";

/**
 * Runs the embedded default: one process, state in memory, no Redis. State
 * is lost when the process stops, and it cannot scale past one process.
 */
export async function runEmbedded(
  config: RelayConfig,
  secret: string | undefined,
  logger: Logger,
): Promise<Relay> {
  const serverId = randomBytes(6).toString("hex");
  const log = logger.child({ serverId });
  const store = new MemoryStore();
  const relay = await createRelay({
    config,
    logger: log,
    store,
    bus: new LocalBus(serverId),
    secret,
  });
  installShutdown(relay, config, log, () => store.close());
  // The signal's default action ends the process at once, with every
  // bridge's state, where on the clustered relay it replaces the workers.
  process.on("SIGUSR2", () => {
    log.warn(
      "SIGUSR2 ignored: a rolling restart needs the clustered relay (REDIS_URL and WORKERS); the embedded relay keeps its state in this one process",
    );
  });
  if (config.maxConnections !== undefined) {
    capRelayConnections(
      relay.httpServer,
      { max: config.maxConnections, reserve: config.connectionReserve },
      servedAtCap(relay.engineIoPath),
      log,
      { listens: true },
    );
  }
  closeStalledConnections(relay.httpServer, {
    headersTimeoutMs: HEADERS_TIMEOUT_MS,
    bodyTimeoutMs: config.requestBodyTimeoutMs,
  });
  // Node's own limit on a whole request is a total deadline: the idle
  // limit above decides instead, as it does in a worker.
  relay.httpServer.requestTimeout = 0;
  await listenOn(relay.httpServer, { port: config.port, host: config.host });
  const { port } = relay.httpServer.address() as AddressInfo;
  log.info(
    { port, host: config.host, redis: "none" },
    `relay listening on http://${config.host}:${port} (embedded mode: one process, state in memory). ` +
      "To scale out, set REDIS_URL and WORKERS, and run more instances on the same Redis",
  );
  return relay;
}
