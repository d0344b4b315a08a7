import type { Server } from "node:http";
import type { Socket } from "node:net";

export interface IdleConnectionLimits {
  /** Time a new connection has to send its first byte, in ms. */
  firstByteTimeoutMs: number;
  /** Time a client has to close its side after the primary ended a response, in ms. */
  halfOpenTimeoutMs: number;
}

/**
 * Closes the primary's connections that no worker's timeout covers. A
 * connection that sends no byte never reaches a worker, because sticky
 * picks the worker from the first request's header. A request with a body
 * stays in the primary, which ends the connection after the response. A
 * client that never closes its own half would then keep the primary's
 * file descriptor for good.
 */
export function closeIdleConnections(
  server: Server,
  limits: IdleConnectionLimits,
): void {
  server.on("connection", (socket: Socket) => {
    socket.setTimeout(limits.firstByteTimeoutMs);
    socket.once("timeout", () => socket.destroy());
    socket.once("data", () => socket.setTimeout(0));
    socket.once("finish", () => socket.setTimeout(limits.halfOpenTimeoutMs));
  });
}
