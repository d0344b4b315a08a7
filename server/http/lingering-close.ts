import type { EventEmitter } from "node:events";
import type { IncomingMessage, ServerResponse } from "node:http";
import { Socket } from "node:net";

/** Bounds of a lingering close (`LINGER_TIMEOUT_MS`, `LINGER_MAX_BYTES`). */
export interface LingerLimits {
  /**
   * Maximum time a connection stays open after the relay has ended it
   * while the client still sends, in ms. It gives the client time to read
   * the response before the close.
   */
  timeoutMs: number;
  /**
   * Maximum bytes read and dropped from a connection after the relay has
   * ended it, which bounds the work a fast client can cause.
   */
  maxBytes: number;
}

/** Default of LINGER_TIMEOUT_MS. */
export const DEFAULT_LINGER_TIMEOUT_MS = 2000;

/**
 * Default of LINGER_MAX_BYTES. A client on a link under 64 Mbit/s sends
 * less within DEFAULT_LINGER_TIMEOUT_MS.
 */
export const DEFAULT_LINGER_MAX_BYTES = 16 * 1024 * 1024;

/** Byte checks of the lingering sockets, by socket (`destroyAfterLinger`). */
const lingerByteChecks = new WeakMap<Socket, () => void>();

/**
 * Destroys `request` and its connection at once. Destroying the request
 * emits its 'close', which stops its readers. A client still sending may
 * get a TCP reset, which can discard a response it has not read yet.
 */
export function destroyRequestConnection(request: IncomingMessage): void {
  request.destroy();
  request.socket.destroy();
}

/**
 * Makes `response` the last on its connection, and closes the connection
 * lingering once the response has been sent. The relay ends its side,
 * then reads and drops the rest of the request for at most
 * `limits.timeoutMs` and `limits.maxBytes` before it destroys the socket.
 * Destroying a socket with unread bytes makes the kernel send a reset, and
 * a client still sending its body could then lose the response.
 *
 * Only a socket lingers here. A cluster worker gets a stand-in stream
 * from @socket.io/sticky for a request with a body, and ending it makes
 * the primary end the real connection, where `closeIdleConnections` lingers.
 */
export function closeLingering(
  request: IncomingMessage,
  response: ServerResponse,
  limits: LingerLimits,
): void {
  const connection = request.socket;
  if (!response.headersSent) response.setHeader("Connection", "close");
  if (connection instanceof Socket) {
    // Node 20's HTTP server calls destroySoon() after a response with
    // `Connection: close`, which ends the socket and destroys it once the
    // end is written. This socket is to end, and close later.
    connection.destroySoon = () => connection.end();
  }
  response.once("finish", () => {
    // express.json pauses a body it rejects, and a paused body stops reads.
    request.resume();
    connection.end();
    if (connection instanceof Socket) {
      destroyAfterLinger(connection, request, limits);
    }
  });
}

/**
 * Destroys `socket`, whose writable side has ended, once `limits.timeoutMs`
 * have passed or it has read more than `limits.maxBytes` since. `reads`
 * emits 'data' for what the socket reads: the socket, or the request
 * whose body the HTTP parser reads from it. The socket closes earlier on
 * its own when the client ends its side too.
 */
export function destroyAfterLinger(
  socket: Socket,
  reads: EventEmitter,
  limits: LingerLimits,
): void {
  const bytesBefore = socket.bytesRead;
  const timer = setTimeout(() => socket.destroy(), limits.timeoutMs);
  timer.unref();
  const checkBytes = (): void => {
    if (socket.bytesRead - bytesBefore > limits.maxBytes) socket.destroy();
  };
  reads.on("data", checkBytes);
  lingerByteChecks.set(socket, checkBytes);
  socket.once("close", () => {
    clearTimeout(timer);
    reads.off("data", checkBytes);
    lingerByteChecks.delete(socket);
  });
}

/**
 * Reads and drops the body of `request`, which gets no response because
 * its connection's writable side has ended. On a lingering socket, what
 * it reads counts toward the socket's byte limit, as the body of the request
 * that ended the connection does, so requests pipelined behind that one
 * cannot make the socket read more.
 */
export function discardRequest(request: IncomingMessage): void {
  const connection = request.socket;
  if (connection instanceof Socket) {
    // A request is dropped in a 'finish' listener of the response before
    // it, which can run ahead of the one in `closeLingering` that starts
    // the linger. The check is therefore looked up on each read.
    const checkBytes = (): void => lingerByteChecks.get(connection)?.();
    // A request without a body emits no 'data', but its header counts.
    checkBytes();
    request.on("data", checkBytes);
  }
  request.resume();
}
