import type { Server } from "node:http";
import type { Duplex } from "node:stream";
import { Counter } from "prom-client";
import type { Logger } from "../logger.ts";
import { RepeatLimiter } from "../logging/repeat-limiter.ts";
import { relayRegistry } from "../metrics/relay-metrics.ts";

/** Time between two log lines about rejected connections, in ms. */
const REJECTION_LOG_WINDOW_MS = 10_000;

const connectionsRejected = new Counter({
  name: "relay_connections_rejected_total",
  help: "Connections closed on arrival because MAX_CONNECTIONS were open on the process.",
  registers: [relayRegistry],
});

/** Counts rejected connections. */
interface RejectionCounter {
  inc(): void;
}

/** Returns a function that counts a rejected connection and logs it, once per window. */
function rejectionReporter(
  max: number,
  logger: Logger,
  counter: RejectionCounter,
): () => void {
  const repeats = new RepeatLimiter(REJECTION_LOG_WINDOW_MS);
  return () => {
    counter.inc();
    const suppressed = repeats.admit("rejected");
    if (suppressed === null) return;
    logger.warn(
      { maxConnections: max, suppressed },
      "rejected a connection: MAX_CONNECTIONS connections are open on this process; raise the open-files limit and MAX_CONNECTIONS, or add processes",
    );
  };
}

/**
 * Closes each connection that arrives while `max` are open on a server
 * that listens itself. Node closes them before the `connection` event.
 * The primary counts them in its own registry, since /metrics serves the
 * workers' registries and the primary's.
 *
 * Node lowers a server's count when it sends a socket to a worker, and
 * counts a socket queued behind one the worker has not acknowledged yet
 * until it is sent. On Node 20.20 a send to a worker that has died but
 * whose closed IPC channel the primary has not read yet reports success,
 * because Node ignores the failed write. So @socket.io/sticky does not
 * destroy the socket, and the count drops once. Node then keeps the
 * socket's handle open, and the queue unsent, until the primary exits.
 * `rerouteHandoffsOnExit` hands those sockets to live workers or closes
 * them, so each is counted once and no client waits on a dead worker.
 */
export function capListenedConnections(
  server: Server,
  max: number,
  logger: Logger,
  counter: RejectionCounter = connectionsRejected,
): void {
  server.maxConnections = max;
  server.on("drop", rejectionReporter(max, logger, counter));
}

/**
 * Closes each connection that a cluster primary hands to this worker
 * while `max` are open on it. Node counts only the connections a server
 * accepted itself, so a worker's server, which accepts none, counts here.
 * The other listeners still run on a rejected connection, but serve nothing:
 * sticky pushes the request's first bytes into it after this listener,
 * and a destroyed stream drops them.
 */
export function capHandedConnections(
  server: Server,
  max: number,
  logger: Logger,
): void {
  const rejected = rejectionReporter(max, logger, connectionsRejected);
  let open = 0;
  const onClose = (): void => {
    open -= 1;
  };
  server.prependListener("connection", (connection: Duplex) => {
    if (open >= max) {
      connection.destroy();
      rejected();
      return;
    }
    open += 1;
    connection.once("close", onClose);
  });
}
