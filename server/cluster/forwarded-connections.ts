import type { Server } from "node:http";
import { Socket } from "node:net";
import type { Duplex } from "node:stream";

/**
 * Destroys each connection that @socket.io/sticky forwards chunk by chunk
 * once its response has been sent. Sticky gives a worker a stand-in
 * stream, not a socket, for a request with a body (an API write, a
 * polling POST). The server ends that stream's writable side after the
 * response, but nothing ends its readable side, so the stream never
 * closes. Sticky's worker then keeps it in its map of connections for
 * good, about 3.7 KB of heap per request with @socket.io/sticky 2.0.1.
 * The primary has already ended the real connection by then.
 */
export function releaseForwardedConnections(server: Server): void {
  server.on("connection", (connection: Duplex) => {
    if (connection instanceof Socket) return;
    connection.once("finish", () => connection.destroy());
  });
}
