import cluster from "node:cluster";
import type { RelayConfig } from "../config.ts";
import type { Logger } from "../logger.ts";
import type { Relay } from "../relay/create-relay.ts";
import { sendToPrimary } from "./worker-ipc.ts";

/**
 * Message from a worker telling the primary that it started draining on
 * its own (a signal sent to the worker, or a crash), so that the primary
 * stops handing it new connections.
 */
export const DRAINING_MESSAGE = "relay:worker-draining";

/** Starts a graceful shutdown that ends with `process.exit(exitCode)`. */
export type ShutdownHandler = (reason: string, exitCode: number) => void;

let installedHandler: ShutdownHandler | undefined;

/** Sets the handler that `requestShutdown` calls: one per process. */
export function setShutdownHandler(handler: ShutdownHandler): void {
  installedHandler = handler;
}

/**
 * Starts this process's graceful shutdown, as a signal would, but with
 * `exitCode`. Returns false when no shutdown handler is installed yet
 * (the process is still starting).
 */
export function requestShutdown(reason: string, exitCode: number): boolean {
  if (installedHandler === undefined) return false;
  installedHandler(reason, exitCode);
  return true;
}

/**
 * Signals that drain the process. SIGHUP is among them because closing the
 * terminal that started the relay sends it, and its default action ends
 * the process at once, without a drain or a log line.
 */
export const SHUTDOWN_SIGNALS = ["SIGTERM", "SIGINT", "SIGHUP"] as const;

/**
 * Closes the relay on SIGTERM, SIGINT or SIGHUP: readiness turns 503 and new
 * handshakes get `UNAVAILABLE` at once, then the relay closes its sockets
 * in batches over the drain window, letting work in flight finish, then
 * `cleanup` runs. The process exits by the shutdown deadline even if
 * closing hangs.
 */
export function installShutdown(
  relay: Relay,
  config: RelayConfig,
  logger: Logger,
  cleanup: () => Promise<void>,
): void {
  let stopping = false;
  const stop: ShutdownHandler = (reason, exitCode) => {
    if (stopping) return;
    stopping = true;
    const started = Date.now();
    logger.info(
      {
        reason,
        drainWindowMs: config.drainWindowMs,
        timeoutMs: config.shutdownTimeoutMs,
      },
      "shutting down",
    );
    if (cluster.isWorker) sendToPrimary(DRAINING_MESSAGE, logger);
    relay.drain();
    const deadline = setTimeout(() => {
      logger.error(
        { timeoutMs: config.shutdownTimeoutMs },
        "shutdown deadline passed, exiting",
      );
      logger.flush?.();
      process.exit(1);
    }, config.shutdownTimeoutMs);
    deadline.unref();
    relay
      .close()
      .then(cleanup)
      .then(() => {
        logger.info({ exitCode, durationMs: Date.now() - started }, "stopped");
        logger.flush?.();
        process.exit(exitCode);
      })
      .catch((error: unknown) => {
        logger.error({ err: error }, "shutdown failed");
        logger.flush?.();
        process.exit(1);
      });
  };
  setShutdownHandler(stop);
  for (const signal of SHUTDOWN_SIGNALS)
    process.on(signal, () => stop(signal, 0));
}
