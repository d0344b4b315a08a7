import type { Serializable } from "node:child_process";
import cluster, { type Worker } from "node:cluster";
import type { Logger } from "../logger.ts";

/** Failed sends and signals per worker, so that only the first is logged. */
const failures = new WeakMap<Worker, number>();
/** Failed sends from this worker to its primary, so that only the first is logged at warn. */
let primaryFailures = 0;

/** Returns the `type` of an object message, or a string message itself. */
export function messageTypeOf(message: unknown): string | undefined {
  if (typeof message === "string") return message;
  if (typeof message === "object" && message !== null) {
    const { type } = message as { type?: unknown };
    if (typeof type === "string") return type;
  }
  return undefined;
}

/**
 * Logs the first failure to reach `worker` at warn level and counts the
 * rest, which `watchWorkerErrors` logs once the worker exits.
 */
function recordFailure(
  worker: Worker,
  error: unknown,
  logger: Logger,
  messageType?: string,
): void {
  const count = (failures.get(worker) ?? 0) + 1;
  failures.set(worker, count);
  if (count > 1) return;
  logger.warn(
    {
      workerId: worker.id,
      workerPid: worker.process.pid,
      messageType,
      err: error,
    },
    messageType === undefined
      ? "a message or signal to the worker failed (the worker has probably exited)"
      : "sending a message to the worker failed (the worker has probably exited)",
  );
}

/**
 * Makes a failed IPC send or signal to `worker` log a warning instead of
 * crashing the primary. A worker that has died keeps its IPC channel open
 * in the primary until the primary reads the channel's end, and a send
 * before that fails with EPIPE. Node 20 passes that error to the send's
 * callback. Without a callback it emits the error on `worker.process`, and
 * the cluster module emits it again on `worker`, where it throws when
 * nothing listens. A failed `worker.kill()` (other than for a process that
 * is gone) takes the same path. This listener covers the sends without a
 * callback: `sticky:abort` of @socket.io/sticky 2.0.1 and the metrics
 * request of prom-client 15.1's AggregatorRegistry. `watchPrimaryErrors`
 * does the same in a worker.
 */
export function watchWorkerErrors(worker: Worker, logger: Logger): void {
  worker.on("error", (error: Error) => recordFailure(worker, error, logger));
  worker.once("exit", () => {
    const count = failures.get(worker) ?? 0;
    if (count <= 1) return;
    logger.warn(
      { workerId: worker.id, workerPid: worker.process.pid, failures: count },
      "failed messages or signals to the worker before it exited",
    );
  });
}

/**
 * Sends `message` to `worker` unless its IPC channel is closed, and logs a
 * failed send instead of throwing. `onFailure` runs after a failed send,
 * not when the channel was already closed.
 */
export function sendToWorker(
  worker: Worker,
  message: Serializable,
  logger: Logger,
  onFailure?: (error: Error) => void,
): void {
  if (!worker.isConnected()) return;
  // With a callback, Node reports a failed send only to it, never as an
  // 'error' event.
  worker.send(message, (error) => {
    if (error === null) return;
    recordFailure(worker, error, logger, messageTypeOf(message));
    onFailure?.(error);
  });
}

/**
 * Logs the first failed send to the primary at warn level, and the rest
 * at debug level with their count.
 */
function recordPrimaryFailure(
  error: unknown,
  logger: Logger,
  messageType?: string,
): void {
  primaryFailures += 1;
  if (primaryFailures > 1) {
    logger.debug(
      { messageType, failures: primaryFailures, err: error },
      "another message to the primary failed",
    );
    return;
  }
  logger.warn(
    { messageType, err: error },
    messageType === undefined
      ? "a message to the primary failed (the primary has probably exited or closed the channel)"
      : "sending a message to the primary failed (the primary has probably exited or closed the channel)",
  );
}

/**
 * Makes a failed IPC send from this cluster worker log a warning instead
 * of crashing the worker. On Node 20 (seen on 20.20.2), `process.send()`
 * without a callback never throws for a lost channel. It emits an 'error'
 * event on `process` instead: ERR_IPC_CHANNEL_CLOSED once the channel is
 * closed, and EPIPE while the primary is dead but this worker has not yet
 * read the channel's end. The cluster module emits that error again on
 * `cluster.worker`, where it throws when nothing listens, before any
 * 'error' listener on `process` runs. This listener covers the sends
 * without a callback that the relay does not make itself: the metrics
 * responses of prom-client 15.1's AggregatorRegistry. Does nothing
 * outside a cluster worker.
 */
export function watchPrimaryErrors(logger: Logger): void {
  cluster.worker?.on("error", (error: Error) =>
    recordPrimaryFailure(error, logger),
  );
}

/**
 * Sends `message` to the primary unless this process's IPC channel is
 * closed or missing, and logs a failed send instead of crashing. Returns
 * false when the message was not sent because the channel is closed or
 * missing. `onFailure` runs after a failed send, not when the channel was
 * already closed.
 */
export function sendToPrimary(
  message: Serializable,
  logger: Logger,
  onFailure?: (error: Error) => void,
): boolean {
  if (process.send === undefined || !process.connected) return false;
  // With a callback, Node reports a failed send only to it, never as an
  // 'error' event.
  process.send(message, undefined, {}, (error: Error | null) => {
    if (error === null) return;
    recordPrimaryFailure(error, logger, messageTypeOf(message));
    onFailure?.(error);
  });
  return true;
}
