import type { Worker } from "node:cluster";
import type { Socket } from "node:net";
import { RelayError, toErrorBody } from "../errors.ts";
import {
  destroyAfterLinger,
  type LingerLimits,
} from "../http/lingering-close.ts";
import type { Logger } from "../logger.ts";
import type { FirstChunkListener } from "./sticky-handoff.ts";
import { messageTypeOf } from "./worker-ipc.ts";

/** Message type of @socket.io/sticky 2.0.1 that starts forwarding a request chunk by chunk. */
const STICKY_CHUNK_START = "sticky:http-chunk-start";

/** Returns the raw HTTP response of a 503 with the contract's `UNAVAILABLE` body. */
function unavailableResponse(workerId: number): string {
  const body = JSON.stringify({
    error: toErrorBody(
      new RelayError(
        "UNAVAILABLE",
        `worker ${workerId} exited before it responded; send the request again`,
      ),
    ),
  });
  return (
    "HTTP/1.1 503 Service Unavailable\r\n" +
    "Content-Type: application/json; charset=utf-8\r\n" +
    `Content-Length: ${Buffer.byteLength(body)}\r\n` +
    "Retry-After: 1\r\n" +
    "Connection: close\r\n" +
    "\r\n" +
    body
  );
}

/**
 * Ends `socket` with a 503 when no byte of a response reached it yet, and
 * destroys it otherwise, since a second response would corrupt the first.
 */
function failRequest(
  socket: Socket,
  workerId: number,
  linger: LingerLimits,
): "answered" | "closed" {
  // Sticky's listener would take the next chunk for a new request.
  socket.removeAllListeners("data");
  if (socket.bytesWritten > 0) {
    socket.destroy();
    return "closed";
  }
  socket.end(unavailableResponse(workerId));
  destroyAfterLinger(socket, socket, linger);
  socket.resume();
  return "answered";
}

/**
 * Sends `503 UNAVAILABLE` for each request that @socket.io/sticky was
 * forwarding to a worker when that worker exited without a response.
 *
 * Sticky forwards a request with a body (an API write, a polling POST)
 * chunk by chunk, and keeps its socket in a private map. When the worker
 * dies first, nothing responds on or closes that connection, so its client
 * waits until its own timeout. Here the primary notes which connection
 * sticky is forwarding when it starts a request on a worker: sticky
 * starts it from the connection's first 'data' event, which
 * `noteFirstChunk` must see first (see `onFirstChunk`).
 *
 * Call `watch` for each forked worker, after `setupMaster`.
 */
export function answerForwardedRequestsOnExit(
  linger: LingerLimits,
  logger: Logger,
): { noteFirstChunk: FirstChunkListener; watch(worker: Worker): void } {
  /** The connection whose first chunk sticky is handling, during that 'data' event only. */
  let arriving: Socket | undefined;
  const noteFirstChunk = (socket: Socket): void => {
    arriving = socket;
    queueMicrotask(() => {
      arriving = undefined;
    });
  };

  const watch = (worker: Worker): void => {
    const forwarded = new Set<Socket>();
    const send = worker.send.bind(worker) as (...args: unknown[]) => boolean;
    // NOTE: sticky gives no other way to learn which worker serves a
    // forwarded connection, so its sends are observed here.
    worker.send = ((...args: unknown[]) => {
      const socket = arriving;
      if (
        socket !== undefined &&
        messageTypeOf(args[0]) === STICKY_CHUNK_START
      ) {
        forwarded.add(socket);
        socket.once("close", () => forwarded.delete(socket));
      }
      return send(...args);
    }) as Worker["send"];
    // 'close' comes once the primary has read the worker's IPC channel to
    // the end, so a response the worker sent before it died is written.
    worker.process.once("close", () => {
      const outcome = { answered: 0, closed: 0 };
      for (const socket of forwarded) {
        if (socket.destroyed || socket.writableEnded) continue;
        outcome[failRequest(socket, worker.id, linger)] += 1;
      }
      forwarded.clear();
      if (outcome.answered + outcome.closed === 0) return;
      logger.warn(
        { workerId: worker.id, workerPid: worker.process.pid, ...outcome },
        "worker exited while requests forwarded to it waited for their responses; answered them 503 UNAVAILABLE, or closed those with a partial response",
      );
    });
  };
  return { noteFirstChunk, watch };
}
