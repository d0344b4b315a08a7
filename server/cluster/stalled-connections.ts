import type { IncomingMessage, Server, ServerResponse } from "node:http";
import { Socket } from "node:net";
import type { Duplex } from "node:stream";
import { destroyRequestConnection } from "../http/lingering-close.ts";

/** Time a connection has to send its first request's header, in ms. */
export const HEADERS_TIMEOUT_MS = 10_000;

export interface StalledConnectionLimits {
  /** Time a connection has to send its first request's header, in ms. */
  headersTimeoutMs: number;
  /**
   * Time a request's body may go without a byte arriving, in ms, counted
   * from its header and then from each part of the body.
   */
  bodyTimeoutMs: number;
}

/**
 * Closes connections whose first request has not sent its whole header
 * within `headersTimeoutMs`, and those of requests whose body stops for
 * `bodyTimeoutMs`. Node enforces `headersTimeout` and `requestTimeout`
 * only on a server that listens itself (it starts the check on
 * 'listening'), and a worker's server gets its connections from the
 * primary instead. Without this, a client that never finishes its header
 * or its body keeps a connection for good. A request with a body also
 * keeps the primary's socket, because the primary forwards such a
 * request's bytes itself. Destroying the worker's side of it makes
 * @socket.io/sticky destroy the primary's.
 */
export function closeStalledConnections(
  server: Server,
  limits: StalledConnectionLimits,
): void {
  const timers = new WeakMap<Socket, NodeJS.Timeout>();
  // One listener for every connection, called with the socket as `this`:
  // a closure per connection would stay for the life of each websocket.
  const forget = (socket: Socket): void => {
    clearTimeout(timers.get(socket));
    timers.delete(socket);
  };
  const clearOnClose = function (this: Socket): void {
    forget(this);
  };
  const clear = (socket: Socket): void => {
    forget(socket);
    socket.removeListener("close", clearOnClose);
  };
  server.on("connection", (socket: Socket) => {
    const timer = setTimeout(() => socket.destroy(), limits.headersTimeoutMs);
    timer.unref();
    timers.set(socket, timer);
    socket.on("close", clearOnClose);
  });
  server.on("request", (request: IncomingMessage, response: ServerResponse) => {
    clear(request.socket);
    closeStalledBody(request, response, limits.bodyTimeoutMs);
  });
  server.on("upgrade", (request: IncomingMessage) => clear(request.socket));
}

/** Checks of a body's progress per `bodyTimeoutMs`, which bound how late a stall is seen. */
const CHECKS_PER_TIMEOUT = 8;

/** Byte counters of the stand-in streams of forwarded connections. */
const forwardedBytes = new WeakMap<Duplex, { bytes: number }>();

/** Returns true when the header of `request` announces a body. */
export function hasBody(request: IncomingMessage): boolean {
  if (request.headers["transfer-encoding"] !== undefined) return true;
  return (declaredBodyLength(request) ?? 0) > 0;
}

/**
 * Returns the body length in bytes that the `Content-Length` header of
 * `request` declares, or undefined when it has none. Encoded bodies
 * declare their length before decoding.
 */
export function declaredBodyLength(
  request: IncomingMessage,
): number | undefined {
  const header = request.headers["content-length"];
  if (header === undefined) return undefined;
  const length = Number(header);
  return Number.isFinite(length) ? length : undefined;
}

/**
 * Returns a function that reads the number of bytes `connection` has received.
 * A socket counts them itself, even when the HTTP parser reads its handle
 * directly. The stand-in stream that @socket.io/sticky gives a worker for
 * a request with a body does not, so its chunks are counted here. The
 * server already reads that stream as it flows.
 */
function bytesReceived(connection: Duplex): () => number {
  if (connection instanceof Socket) return () => connection.bytesRead;
  // One counter per connection, since pipelined requests share it.
  const counter = forwardedBytes.get(connection) ?? countBytes(connection);
  return () => counter.bytes;
}

/** Starts counting the bytes that `connection` emits and returns the counter. */
function countBytes(connection: Duplex): { bytes: number } {
  const counter = { bytes: 0 };
  connection.on("data", (chunk: Buffer) => {
    counter.bytes += chunk.length;
  });
  forwardedBytes.set(connection, counter);
  return counter;
}

/**
 * Watches the body of `request`, and sends 408 and closes its connection
 * once the body has gone `idleMs` without a byte. A body that keeps
 * arriving, however slowly, is waited for. When a response has already
 * begun (an early response that did not wait for the body), the
 * connection is only closed.
 */
function closeStalledBody(
  request: IncomingMessage,
  response: ServerResponse,
  idleMs: number,
): void {
  // Node emits 'request' before it marks even a request without a body
  // complete, and Engine.IO keeps a long-polling GET unread for seconds.
  if (request.complete || !hasBody(request)) return;
  const connection = request.socket as Duplex;
  const received = bytesReceived(connection);
  let lastBytes = received();
  let lastProgressAt = performance.now();
  const check = setInterval(
    () => {
      // A handler may never read a body that has arrived in full, as
      // Engine.IO does with a polling GET that carries one.
      if (request.complete) {
        clearInterval(check);
        return;
      }
      const bytes = received();
      if (bytes !== lastBytes) {
        lastBytes = bytes;
        lastProgressAt = performance.now();
      } else if (performance.now() - lastProgressAt >= idleMs) {
        clearInterval(check);
        abandonRequest(request, response, idleMs);
      }
    },
    Math.max(1, Math.floor(idleMs / CHECKS_PER_TIMEOUT)),
  );
  check.unref();
  const done = (): void => clearInterval(check);
  request.once("end", done);
  request.once("close", done);
}

/**
 * Sends 408 with the contract's error body unless a response began, then
 * destroys the request and its connection. Destroying the request emits
 * its 'close', which stops its readers. Node emits no 'close' for a
 * request whose response has finished, so Engine.IO would otherwise
 * respond to a polling POST a second time when its own body timer fires.
 */
function abandonRequest(
  request: IncomingMessage,
  response: ServerResponse,
  idleMs: number,
): void {
  const close = (): void => destroyRequestConnection(request);
  if (response.headersSent) {
    close();
    return;
  }
  const body = JSON.stringify({
    error: {
      code: "TIMEOUT",
      message: `request body stalled: no byte arrived for ${idleMs} ms`,
    },
  });
  response.once("finish", close);
  response.writeHead(408, {
    "Content-Type": "application/json; charset=utf-8",
    "Content-Length": Buffer.byteLength(body),
    Connection: "close",
  });
  response.end(body);
}
