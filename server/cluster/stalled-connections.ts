import type { Server } from "node:http";
import type { Socket } from "node:net";

/**
 * Closes connections whose first request has not sent its whole header
 * within `timeoutMs`. Node enforces `headersTimeout` only on a server that
 * listens itself (it starts the check on 'listening'), and a worker's
 * server gets its connections from the primary instead, so without this a
 * client that never finishes its header holds a connection for good.
 */
export function closeStalledConnections(
  server: Server,
  timeoutMs: number,
): void {
  const timers = new WeakMap<Socket, NodeJS.Timeout>();
  const clear = (socket: Socket): void => {
    clearTimeout(timers.get(socket));
    timers.delete(socket);
  };
  server.on("connection", (socket: Socket) => {
    const timer = setTimeout(() => socket.destroy(), timeoutMs);
    timer.unref();
    timers.set(socket, timer);
    socket.once("close", () => clear(socket));
  });
  server.on("request", (request: { socket: Socket }) => clear(request.socket));
  server.on("upgrade", (request: { socket: Socket }) => clear(request.socket));
}
