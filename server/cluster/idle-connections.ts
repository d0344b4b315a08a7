import type { Server } from "node:http";
import type { Socket } from "node:net";
import {
  destroyAfterLinger,
  type LingerLimits,
} from "../http/lingering-close.ts";

export interface IdleConnectionLimits {
  /** Time a new connection has to send its first byte, in ms. */
  firstByteTimeoutMs: number;
  /** Bounds of the lingering close after the primary ended a connection. */
  linger: LingerLimits;
}

/**
 * Closes the primary's connections that no worker's timeout covers. A
 * connection that sends no byte never reaches a worker, because sticky
 * picks the worker from the first request's header. A request with a body
 * stays in the primary, which ends the connection after the response.
 * The primary then reads and drops what the client still sends, and
 * destroys the connection after `limits.linger.timeoutMs` or
 * `limits.linger.maxBytes` (`destroyAfterLinger`). Destroying it at once could reset a client
 * still sending its body before it read the response, and a client that
 * never closed its own half would keep the file descriptor for good.
 */
export function closeIdleConnections(
  server: Server,
  limits: IdleConnectionLimits,
): void {
  server.on("connection", (socket: Socket) => {
    socket.setTimeout(limits.firstByteTimeoutMs);
    socket.once("timeout", () => socket.destroy());
    socket.once("data", () => socket.setTimeout(0));
    socket.once("finish", () => {
      // Sticky would forward each chunk to the worker, which has ended the
      // request and reads no more of it.
      socket.removeAllListeners("data");
      destroyAfterLinger(socket, socket, limits.linger);
    });
  });
}
