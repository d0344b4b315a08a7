import type { Server } from "node:http";
import type { Socket } from "node:net";

/**
 * Stops the primary from reading a connection that @socket.io/sticky is
 * about to hand to a worker.
 *
 * When the primary sends a socket handle to a worker, Node keeps the
 * primary's copy of the handle reading until the worker acknowledges it,
 * and discards whatever that copy reads. A websocket client that sends its
 * first packet right after the worker's handshake response can lose that
 * packet to the primary and hang (measured with @socket.io/sticky 2.0.1 on
 * Node 20: about 1 connection in 20). Stopping reads before the handoff
 * leaves those bytes in the kernel for the worker.
 *
 * Requests that may span several chunks (with a body) stay in the primary,
 * which forwards them chunk by chunk, so they keep reading.
 */
export function stopReadingBeforeHandoff(socket: Socket, chunk: Buffer): void {
  const end = chunk.indexOf("\r\n\r\n");
  const header = chunk
    .subarray(0, end < 0 ? chunk.length : end)
    .toString("latin1")
    .toLowerCase();
  if (
    header.includes("content-length:") ||
    header.includes("transfer-encoding:")
  ) {
    return;
  }
  // NOTE: `_handle` is Node's private libuv handle. This must run before
  // sticky's own data listener sends the handle (see `onFirstChunk`).
  const handle = (
    socket as unknown as { _handle?: { readStop?: () => number } }
  )._handle;
  handle?.readStop?.();
}

/** A listener of a connection's first chunk of data. */
export type FirstChunkListener = (socket: Socket, chunk: Buffer) => void;

/**
 * Runs `listeners` in order on each connection's first chunk, before
 * @socket.io/sticky's own data listener hands the connection to a worker or
 * starts forwarding its request. One prepended listener serves them all.
 */
export function onFirstChunk(
  server: Server,
  listeners: FirstChunkListener[],
): void {
  server.on("connection", (socket: Socket) => {
    socket.prependOnceListener("data", (chunk: Buffer) => {
      for (const listener of listeners) listener(socket, chunk);
    });
  });
}
