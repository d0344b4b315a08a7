import type { Serializable } from "node:child_process";
import type { Worker } from "node:cluster";
import type { Logger } from "../logger.ts";

/** Failed sends and signals per worker, so that only the first is logged. */
const failures = new WeakMap<Worker, number>();

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
 * request of prom-client 15.1's AggregatorRegistry.
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
