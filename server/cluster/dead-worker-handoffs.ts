import cluster, { type Worker } from "node:cluster";
import { Socket, type SocketConstructorOpts } from "node:net";
import type { Logger } from "../logger.ts";
import { messageTypeOf } from "./worker-ipc.ts";

/** Message type of @socket.io/sticky 2.0.1 that hands a connection to a worker. */
const STICKY_CONNECTION = "sticky:connection";

type SendCallback = (error: Error | null) => void;

/** A send that Node queued behind a handle the worker has not acknowledged. */
interface QueuedSend {
  message: unknown;
  handle: unknown;
  callback?: SendCallback;
}

/**
 * Private IPC state of a `ChildProcess` in Node 20.20
 * (lib/internal/child_process.js). `_pendingMessage` is the last handle
 * sent, which Node keeps open until the receiver acknowledges it, with
 * the message it was sent with as `msg`. `_handleQueue` lists the sends
 * made meanwhile, each with the message and socket passed to `send()`.
 */
interface ChildProcessInternals {
  _pendingMessage?: { message: { msg?: unknown }; handle: unknown } | null;
  _handleQueue?: QueuedSend[] | null;
}

/** Whether the warning about Node's missing IPC fields was logged. */
let missingFieldsLogged = false;

/** Returns the error that a send queued for `worker` gets once it has exited. */
function workerExitedError(worker: Worker): Error {
  const error: NodeJS.ErrnoException = new Error(
    `worker ${worker.id} exited before this message was sent to it`,
  );
  error.code = "ERR_IPC_CHANNEL_CLOSED";
  return error;
}

/** Returns a send callback that destroys `socket` when the send fails. */
function destroyOnError(socket: Socket): SendCallback {
  return (error) => {
    if (error !== null) socket.destroy();
  };
}

/** Counts of what happened to the sends a dead worker left behind. */
interface Outcome {
  rerouted: number;
  closed: number;
  failedSends: number;
}

/**
 * Sends each connection that `worker` never received to the workers in
 * the balancer, round-robin, or closes it when there is none. Other sends
 * fail with ERR_IPC_CHANNEL_CLOSED.
 */
function handOnUnsent(worker: Worker): Outcome {
  const internals = worker.process as unknown as ChildProcessInternals;
  const pending = internals._pendingMessage ?? undefined;
  const queue = internals._handleQueue ?? [];
  internals._pendingMessage = null;
  internals._handleQueue = null;

  const outcome: Outcome = { rerouted: 0, closed: 0, failedSends: 0 };
  // `cluster.workers` lists only the balancer's workers as enumerable.
  const targets = Object.values(cluster.workers ?? {}).filter(
    (candidate): candidate is Worker =>
      candidate !== undefined &&
      candidate !== worker &&
      candidate.isConnected(),
  );
  let next = 0;
  const handOn = (
    message: unknown,
    socket: Socket,
    callback: SendCallback,
  ): void => {
    const target = targets[next % Math.max(1, targets.length)];
    next += 1;
    if (target === undefined) {
      outcome.closed += 1;
      callback(workerExitedError(worker));
      return;
    }
    outcome.rerouted += 1;
    target.send(message as object, socket, callback);
  };

  if (pending !== undefined) {
    // The primary's socket object gave this handle up when Node sent it,
    // so a new socket takes it over. It does not read, so that the next
    // worker reads whatever the client sent after the first chunk.
    const socket = new Socket({
      handle: pending.handle,
      pauseOnCreate: true,
      readable: true,
      writable: true,
    } as SocketConstructorOpts);
    if (messageTypeOf(pending.message.msg) === STICKY_CONNECTION) {
      handOn(pending.message.msg, socket, destroyOnError(socket));
    } else {
      outcome.closed += 1;
      socket.destroy();
    }
  }
  for (const { message, handle, callback } of queue) {
    if (
      handle instanceof Socket &&
      messageTypeOf(message) === STICKY_CONNECTION
    ) {
      handOn(message, handle, callback ?? destroyOnError(handle));
      continue;
    }
    outcome.failedSends += 1;
    if (callback !== undefined) {
      callback(workerExitedError(worker));
    } else if (handle instanceof Socket) {
      handle.destroy();
    }
  }
  return outcome;
}

/**
 * Hands each connection that `worker` never received to a live worker
 * once `worker` has exited, or closes it when no worker is in the
 * balancer, so that its client reconnects.
 *
 * Node 20.20 keeps a socket handle it sent over IPC open until the
 * receiver acknowledges it, and queues later sends until then. When the
 * worker dies first, Node closes the channel but keeps that handle and
 * the queued sockets for as long as the primary runs, and calls none of
 * their callbacks. This happens whether the handle was written before the
 * worker died (a stopped or busy worker) or after (Node reports that
 * failed write as a success).
 *
 * The work runs on the child process's `close` event, which Node emits
 * once the worker has exited and the primary has read its IPC channel to
 * the end, so that every acknowledgement the worker sent counts. Queued
 * sends of other messages get ERR_IPC_CHANNEL_CLOSED in their callback,
 * so that sticky destroys a connection whose body it was forwarding.
 *
 * A request with a body whose worker dies mid-request gets its 503 from
 * `answerForwardedRequestsOnExit` instead.
 *
 * NOTE: this reads and clears Node's private `_pendingMessage` and
 * `_handleQueue` and wraps a raw handle with the undocumented `handle`
 * socket option. Without those fields (another Node version) it logs a
 * warning at the first fork and leaves such connections open.
 */
export function rerouteHandoffsOnExit(worker: Worker, logger: Logger): void {
  if (
    !missingFieldsLogged &&
    !("_pendingMessage" in worker.process && "_handleQueue" in worker.process)
  ) {
    missingFieldsLogged = true;
    logger.warn(
      { nodeVersion: process.version },
      "this Node.js version lacks the IPC fields read to recover connections handed to a worker that dies; such connections stay open until the primary exits",
    );
  }
  worker.process.once("close", () => {
    const outcome = handOnUnsent(worker);
    // Node removes an exited worker from `cluster.workers` on 'exit' if its
    // channel is closed by then, and otherwise on 'disconnect', which it
    // never emits while a handle waits for an acknowledgement. Sticky would
    // keep picking the dead worker.
    if (cluster.workers?.[worker.id] === worker) {
      delete cluster.workers[worker.id];
    }
    const { rerouted, closed, failedSends } = outcome;
    if (rerouted + closed + failedSends === 0) return;
    logger.warn(
      { workerId: worker.id, workerPid: worker.process.pid, ...outcome },
      "worker exited before it received connections handed to it; rerouted them to live workers, or closed them when none was live",
    );
  });
}
