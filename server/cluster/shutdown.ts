import type { RelayConfig } from "../config.ts";
import type { Logger } from "../logger.ts";
import type { Relay } from "../relay/create-relay.ts";

/**
 * Closes the relay on SIGTERM or SIGINT: readiness turns 503 and new
 * handshakes get `UNAVAILABLE`, then sockets are closed (clients reconnect
 * elsewhere), then `cleanup` runs. The process exits by the shutdown
 * deadline even if closing hangs.
 */
export function installShutdown(
  relay: Relay,
  config: RelayConfig,
  logger: Logger,
  cleanup: () => Promise<void>,
): void {
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "shutting down");
    relay.drain();
    const deadline = setTimeout(() => {
      logger.error(
        { timeoutMs: config.shutdownTimeoutMs },
        "shutdown deadline passed, exiting",
      );
      process.exit(1);
    }, config.shutdownTimeoutMs);
    deadline.unref();
    relay
      .close()
      .then(cleanup)
      .then(() => {
        logger.info("stopped");
        logger.flush?.();
        process.exit(0);
      })
      .catch((error: unknown) => {
        logger.error({ err: error }, "shutdown failed");
        process.exit(1);
      });
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}
