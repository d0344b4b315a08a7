import type { IncomingMessage, Server } from "node:http";
import type { Socket } from "node:net";

export interface StalledConnectionLimits {
  /** Time a connection has to send its first request's header, in ms. */
  headersTimeoutMs: number;
  /** Time a request has to send its body once its header arrived, in ms. */
  bodyTimeoutMs: number;
}

/**
 * Closes connections whose first request has not sent its whole header
 * within `headersTimeoutMs`, and those of requests whose body has not
 * arrived within `bodyTimeoutMs` after their header. Node enforces
 * `headersTimeout` and `requestTimeout` only on a server that listens
 * itself (it starts the check on 'listening'), and a worker's server gets
 * its connections from the primary instead. Without this, a client that
 * never finishes its header or its body keeps a connection for good. A
 * request with a body also keeps the primary's socket, because the
 * primary forwards such a request's bytes itself. Destroying the worker's
 * side of it makes @socket.io/sticky destroy the primary's.
 */
export function closeStalledConnections(
  server: Server,
  limits: StalledConnectionLimits,
): void {
  const timers = new WeakMap<Socket, NodeJS.Timeout>();
  const clear = (socket: Socket): void => {
    clearTimeout(timers.get(socket));
    timers.delete(socket);
  };
  server.on("connection", (socket: Socket) => {
    const timer = setTimeout(() => socket.destroy(), limits.headersTimeoutMs);
    timer.unref();
    timers.set(socket, timer);
    socket.once("close", () => clear(socket));
  });
  server.on("request", (request: IncomingMessage) => {
    clear(request.socket);
    closeStalledBody(request, limits.bodyTimeoutMs);
  });
  server.on("upgrade", (request: IncomingMessage) => clear(request.socket));
}

/**
 * Destroys the connection of `request` unless its body has arrived within
 * `timeoutMs`. A response sent before the body arrived does not stop the
 * timer: Node still reads the rest of the body from that connection.
 */
function closeStalledBody(request: IncomingMessage, timeoutMs: number): void {
  if (request.complete) return;
  const timer = setTimeout(() => request.socket.destroy(), timeoutMs);
  timer.unref();
  const done = (): void => clearTimeout(timer);
  request.once("end", done);
  request.once("close", done);
}
